"""``MODEL.CLIP.WEIGHTS synthetic``: the small CLIP pretrained on the synthetic image-caption pairs.

Like an OpenAI model name, which ``clip`` downloads on first use into its cache folder, this name
resolves to a file that is made on first use and cached: ``tools/pretrain_clip.py``'s default run,
written to ``$DETECTRON2_DATASETS/synthetic_clip/`` (default ``datasets/synthetic_clip``), under a
per-machine lock so that concurrent workers make it once. Later uses load the file.
"""

import contextlib
import os
import random
from typing import Optional

import numpy as np
import torch

__all__ = [
    "SYNTHETIC_CLIP_NAME",
    "SYNTHETIC_CLIP_ARCH",
    "synthetic_clip_path",
    "ensure_synthetic_clip",
]

SYNTHETIC_CLIP_NAME = "synthetic"
SYNTHETIC_CLIP_ARCH = "RNtiny96"


def _folder(datasets_root: Optional[str]) -> str:
    root = datasets_root or os.getenv("DETECTRON2_DATASETS", "datasets")
    return os.path.abspath(os.path.join(root, "synthetic_clip"))


def synthetic_clip_path(datasets_root: Optional[str] = None) -> str:
    """Where the cached small CLIP lives (it may not exist yet)."""
    from .contrastive import final_weights_name

    return os.path.join(_folder(datasets_root), final_weights_name(SYNTHETIC_CLIP_ARCH))


def ensure_synthetic_clip(datasets_root: Optional[str] = None) -> str:
    """Path of the cached small CLIP, pretraining it first when it is missing (a few minutes)."""
    import logging

    from ..data.synthetic import _machine_lock
    from .contrastive import PretrainConfig, pretrain_clip

    path = synthetic_clip_path(datasets_root)
    if os.path.isfile(path):
        return path
    with _machine_lock(path):
        if not os.path.isfile(path):
            logging.getLogger(__name__).warning(
                f"MODEL.CLIP.WEIGHTS '{SYNTHETIC_CLIP_NAME}': {path} does not exist; "
                "pretraining the "
                "small CLIP on synthetic image-caption pairs now (once; tools/pretrain_clip.py)"
            )
            with _global_rng_kept():
                pretrain_clip(
                    os.path.dirname(path),
                    PretrainConfig(arch=SYNTHETIC_CLIP_ARCH),
                    resume=True,
                    datasets_root=datasets_root,
                )
    return path


@contextlib.contextmanager
def _global_rng_kept():
    """Run a block without changing the global random states (torch, numpy, random) its caller
    sees: pretraining on first use must not change the detector that is built after it, or a run
    from nothing would differ from a run with the small CLIP cached."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(py_state)
    np.random.set_state(np_state)
