"""``MODEL.CLIP.WEIGHTS synthetic``: the small CLIP pretrained on the synthetic image-caption pairs.

Like an OpenAI model name, which ``clip`` downloads on first use into its cache folder, this name
resolves to a file (``gridclip_d2.modeling.clip_weights.synthetic_clip_path``) that is made once
and cached: ``tools/pretrain_clip.py``'s default run, written to
``$DETECTRON2_DATASETS/synthetic_clip/`` (default ``datasets/synthetic_clip``), under a per-machine
lock so that concurrent workers make it once. Building a model only reads the file; the setup of
the entry points (``gridclip_d2.engine.setup_cfg``) calls :func:`ensure_synthetic_clip`, which makes
it when missing.
"""

import contextlib
import json
import logging
import os
import random
import time
from typing import Optional

import numpy as np
import torch

from ..data.synthetic import _machine_lock
from ..modeling.clip_weights import SYNTHETIC_CLIP_ARCH, SYNTHETIC_CLIP_NAME, synthetic_clip_path
from .contrastive import PretrainConfig, pretrain_clip
from .zero_shot import format_report

__all__ = [
    "SYNTHETIC_CLIP_NAME",
    "SYNTHETIC_CLIP_ARCH",
    "synthetic_clip_path",
    "ensure_synthetic_clip",
]

logger = logging.getLogger(__name__)


def ensure_synthetic_clip(datasets_root: Optional[str] = None) -> str:
    """Path of the cached small CLIP, pretraining it first when it is missing (about 5 minutes on 2
    CPU cores, once)."""
    path = synthetic_clip_path(datasets_root)
    if os.path.isfile(path):
        return path
    log = _console_logger()
    with _machine_lock(path):
        if not os.path.isfile(path):
            log.warning(
                f"MODEL.CLIP.WEIGHTS '{SYNTHETIC_CLIP_NAME}': {path} does not exist; pretraining "
                "the small CLIP on synthetic image-caption pairs now (once, about 5 minutes on 2 "
                "CPU cores; `python tools/pretrain_clip.py` does the same)"
            )
            start = time.perf_counter()
            with _global_rng_kept():
                pretrain_clip(
                    os.path.dirname(path),
                    PretrainConfig(arch=SYNTHETIC_CLIP_ARCH),
                    resume=True,
                    datasets_root=datasets_root,
                )
            log.info("Small CLIP pretrained in %.0f s: %s", time.perf_counter() - start, path)
            report = os.path.join(os.path.dirname(path), "zero_shot.json")
            if os.path.isfile(report):  # written by the pretraining's zero-shot check
                with open(report) as f:
                    log.info(format_report(json.load(f)))
    return path


def _console_logger() -> logging.Logger:
    """This module's logger, printing to the console even when nothing has set up logging yet:
    first-use pretraining runs inside the entry points' config setup, before Detectron2's
    ``default_setup`` gives the package its handlers, and its zero-shot table must be seen."""
    if logger.hasHandlers():
        return logger
    from detectron2.utils.logger import setup_logger

    return setup_logger(name=__name__, abbrev_name="gridclip_d2")


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
