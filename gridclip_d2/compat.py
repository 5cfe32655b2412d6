"""Run-time compatibility fixes for the libraries this project uses, in one idempotent place.

Build-time fixes of Detectron2 v0.6's source live in ``scripts/install_detectron2.py``; this module
covers what a user's own environment (upstream Detectron2 included) may still need at run time.
Importing :mod:`gridclip_d2` applies them; applying them twice changes nothing.
"""
import numpy as np


def apply():
    # lvis==0.5.3 (LVISEval.accumulate) uses np.float, removed in numpy 1.24; it meant the builtin.
    for name, builtin in (("float", float), ("int", int), ("bool", bool)):
        if name not in np.__dict__:
            setattr(np, name, builtin)


apply()
