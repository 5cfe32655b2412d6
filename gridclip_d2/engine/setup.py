"""One config setup for every entry point: train_net.py, demo/demo.py and the tools.

``setup_cfg(config_file, opts, mode=...)`` reads the config file, applies the KEY VALUE overrides,
registers the data sets a user gives with ``DATASETS.GRIDCLIP.*`` (only those the mode needs) and
adapts the config to this machine (``adapt_cfg_to_hardware``: CPU without CUDA, no AMP on CPU).
Modes:

- ``"train"``: registers the training and test sets. When the config names no vocabulary
  (MODEL.GRIDCLIP.CLASS_NAMES / VOCABULARY / a TEXT_EMBEDDINGS sidecar), the training set's classes
  are written into MODEL.GRIDCLIP.CLASS_NAMES, so the config.yaml saved beside the checkpoints
  builds the model with no training data.
- ``"eval"`` (``--eval-only``): registers the test set, and the training set only for its classes
  and split (its images are not needed); the image-level alignment (a training loss) is turned off,
  so no CLIP teacher is built.
- ``"inference"`` (demo, Python use): registers the training set, without its images, only when its
  json is there (its classes may be the vocabulary); alignment off.
- ``"data"`` (tools reading the training set, e.g. the teacher-embedding dump): registers both.

In every mode, ``MODEL.CLIP.WEIGHTS synthetic`` (the embedded default's small CLIP) is made here
when its file is missing, with a log line (a few minutes, once): building a model only reads it.
"""

import logging
import os
from typing import Optional, Sequence

import yaml

from detectron2.config import CfgNode, get_cfg
from detectron2.utils import comm

from ..config import add_gridclip_config
from ..data.register_from_cfg import register_from_cfg
from ..modeling.clip_weights import SYNTHETIC_CLIP_NAME
from ..pretrain.synthetic_clip import ensure_synthetic_clip
from ..vocabulary import explicit_vocabulary_from_cfg, read_sidecar, vocabulary_from_cfg
from .hardware import adapt_cfg_to_hardware

__all__ = ["SETUP_MODES", "setup_cfg", "merge_config_file"]

logger = logging.getLogger(__name__)

SETUP_MODES = ("train", "eval", "inference", "data")


def merge_config_file(cfg: CfgNode, config_file: str) -> None:
    """``cfg.merge_from_file`` with a safe YAML loader, for the file and its ``_BASE_`` files: a
    config is a file users receive from others, and Detectron2's default (``allow_unsafe=True``)
    falls back to ``yaml.unsafe_load``, which runs the Python a ``!!python/...`` tag names."""
    try:
        cfg.merge_from_file(config_file, allow_unsafe=False)
    except yaml.constructor.ConstructorError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{mark.name}, line {mark.line + 1}" if mark else config_file
        raise ValueError(
            f"Config {where}: {e.problem or e.context}. Config files are read with a safe YAML "
            "loader (plain values only): remove the tag, or write the value as plain YAML."
        ) from None


def setup_cfg(
    config_file: Optional[str],
    opts: Sequence[str] = (),
    *,
    mode: str,
    overrides: Optional[Sequence[str]] = None,
    freeze: bool = True,
) -> CfgNode:
    """The config of ``config_file`` + ``opts`` (+ ``overrides``, applied last), set up for ``mode``
    (see the module docstring)."""
    if mode not in SETUP_MODES:
        raise ValueError(f"setup_cfg: mode must be one of {SETUP_MODES}, got {mode!r}")
    if config_file and not os.path.isfile(config_file):
        raise FileNotFoundError(f"--config-file: no such file: {config_file}")
    cfg = get_cfg()
    add_gridclip_config(cfg)
    if config_file:
        merge_config_file(cfg, config_file)
    cfg.merge_from_list(list(opts or []))
    if overrides:
        cfg.merge_from_list(list(overrides))
    if mode == "train":
        _check_batch_size(cfg.SOLVER.IMS_PER_BATCH, comm.get_world_size())
    if cfg.MODEL.CLIP.WEIGHTS == SYNTHETIC_CLIP_NAME:
        ensure_synthetic_clip()  # made on first use, like clip's download of an OpenAI name
    if mode in ("train", "data"):
        register_from_cfg(cfg)
    elif mode == "eval":
        register_from_cfg(cfg, check_train_images=False)
    else:
        # the training set only for its classes, when no vocabulary names them and its json is there
        register_from_cfg(cfg, splits=("train",), check_train_images=False)
    if mode in ("eval", "inference") and cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.ENABLED:
        cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.ENABLED = False  # a training loss: no teacher at inference
    if mode == "train":
        _record_training_vocabulary(cfg)
    cfg = adapt_cfg_to_hardware(cfg)
    if freeze:
        cfg.freeze()
    return cfg


def _check_batch_size(ims_per_batch: int, num_workers: int) -> None:
    """SOLVER.IMS_PER_BATCH is the total over all workers, split evenly among them: refused before
    anything is built unless it is a positive multiple of their number (Detectron2's own check, in
    the data loader, names no key)."""
    if ims_per_batch <= 0 or ims_per_batch % num_workers:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH is {ims_per_batch}: it must be a positive multiple of the "
            f"number of workers ({num_workers} here: --num-gpus x --num-machines), as it is the "
            "total batch size, split evenly among them; e.g. SOLVER.IMS_PER_BATCH "
            f"{2 * num_workers}"
        )


def _record_training_vocabulary(cfg: CfgNode) -> None:
    """Write the training set's classes into MODEL.GRIDCLIP.CLASS_NAMES when nothing else names the
    vocabulary, so the saved config is self-contained."""
    if explicit_vocabulary_from_cfg(cfg) is not None:
        return
    path = cfg.MODEL.GRIDCLIP.TEXT_EMBEDDINGS
    if path and os.path.isfile(path) and read_sidecar(path) is not None:
        return
    names, source = vocabulary_from_cfg(cfg)
    cfg.MODEL.GRIDCLIP.CLASS_NAMES = list(names)
    logger.info(
        "Vocabulary: the %d classes of %s (recorded in MODEL.GRIDCLIP.CLASS_NAMES)",
        len(names),
        source,
    )
