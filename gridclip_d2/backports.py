"""Run-time fixes of the pinned libraries, each with what it mirrors and when it can go.

The pins: detectron2 v0.6 (built by ``scripts/install_detectron2.py``, whose build-time patches
make v0.6's source build, import and run on today's Python, numpy, Pillow and setuptools) and
lvis 0.5.3 (lvis-api). Nothing here runs at import: each fix is applied where it is needed, so
importing :mod:`gridclip_d2` changes no library. When a pin moves, the version checks below say
which entries have become no-ops; delete those.

Here:

* :func:`patch_create_ddp_model`: Detectron2's ``create_ddp_model`` on a CPU model. Upstream
  (v0.6 and later, up to the newest source read) always passes ``device_ids=[local_rank]``, which
  ``DistributedDataParallel`` rejects for a CPU module. Delete when upstream leaves
  ``device_ids`` unset for CPU models.
* :class:`TrainerStateBackport`: the inner trainer's state (the optimizer: SGD momentum) in
  ``DefaultTrainer``'s checkpoints, under the ``"_trainer"`` key, as ``DefaultTrainer.state_dict``
  does in Detectron2 after v0.6. A no-op on a Detectron2 that has it.
* :func:`patch_grid_offsets`: Detectron2 v0.6's anchor grid (``_create_grid_offsets``, FCOS's
  points) calls ``torch.meshgrid`` without ``indexing``, which PyTorch 2.x warns about on every
  forward pass (and in every traced export, in plain PyTorch); the same grid with
  ``indexing="ij"``, its meaning. Delete when Detectron2's function passes ``indexing``.
* :func:`lvis_numpy_aliases`: ``np.float`` for lvis-api's ``LVISEval.accumulate`` (lvis 0.5.3,
  the newest on PyPI), removed in numpy 1.24; set only while lvis-api runs.

Elsewhere, because the code is part of a class there:

* FCOS label assignment on images without boxes (Detectron2 v0.6's ``FCOS._match_anchors`` fails
  on an empty image): ``GridCLIP.label_anchors`` in ``modeling/gridclip.py``.
* Towers with ``norm="GN"`` (v0.6's ``RetinaNetHead`` probes ``get_norm(norm, 1)``, i.e.
  ``GroupNorm(32, 1)``, and fails): the head's own towers in ``modeling/grid_head.py``.
* The federated loss's class weights and sampling (Detectron2 after v0.6 has
  ``get_fed_loss_cls_weights`` and ``FastRCNNOutputLayers.get_fed_loss_classes``; v0.6 has
  neither): ``modeling/fed_loss.py``.
"""

import contextlib
import functools
import logging
from importlib import metadata
from typing import Iterator, List

import numpy as np
import torch

__all__ = [
    "patch_create_ddp_model",
    "patch_grid_offsets",
    "TrainerStateBackport",
    "lvis_numpy_aliases",
]

logger = logging.getLogger(__name__)


def _version(text: str) -> tuple:
    """ "0.6" -> (0, 6); "0.5.3" -> (0, 5, 3); non-numeric parts end the tuple."""
    out = []
    for part in text.split("."):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


# --- create_ddp_model on CPU ---------------------------------------------------------------------


def _model_on_cpu(model: torch.nn.Module) -> bool:
    first = next(model.parameters(), None)
    return first is None or not first.is_cuda


def patch_create_ddp_model() -> None:
    """Make ``detectron2.engine.defaults.create_ddp_model`` give CPU models ``device_ids=None``.

    The function is module-level and called inside ``DefaultTrainer.__init__``, so a Trainer
    subclass cannot intercept it: it is wrapped where ``DefaultTrainer`` looks it up. Idempotent;
    GPU models and explicit ``device_ids`` pass through unchanged.
    """
    import detectron2.engine as d2_engine
    import detectron2.engine.defaults as d2_defaults
    from detectron2.utils import comm

    original = d2_defaults.create_ddp_model
    if getattr(original, "_gridclip_cpu_fix", False):
        return

    @functools.wraps(original)
    def create_ddp_model(model, *, fp16_compression=False, **kwargs):
        # DDP must not be told a device for CPU modules; upstream sets [local_rank] unless given.
        if comm.get_world_size() > 1 and "device_ids" not in kwargs and _model_on_cpu(model):
            kwargs["device_ids"] = None
        return original(model, fp16_compression=fp16_compression, **kwargs)

    create_ddp_model._gridclip_cpu_fix = True
    d2_defaults.create_ddp_model = create_ddp_model  # what DefaultTrainer.__init__ calls
    d2_engine.create_ddp_model = create_ddp_model  # the public re-export


# --- the anchor grid without a meshgrid warning --------------------------------------------------


def _grid_offsets(size: List[int], stride: int, offset: float, device: torch.device):
    """v0.6's ``_create_grid_offsets`` with ``indexing="ij"`` (the default it relied on)."""
    grid_height, grid_width = size
    shifts_x = torch.arange(
        offset * stride, grid_width * stride, step=stride, dtype=torch.float32, device=device
    )
    shifts_y = torch.arange(
        offset * stride, grid_height * stride, step=stride, dtype=torch.float32, device=device
    )
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    return shift_x.reshape(-1), shift_y.reshape(-1)


def patch_grid_offsets() -> None:
    """Make Detectron2's anchor generators build their grid with :func:`_grid_offsets` (looked up
    in their module at every call, so it is replaced there). Idempotent."""
    import detectron2.modeling.anchor_generator as anchor_generator

    anchor_generator._create_grid_offsets = _grid_offsets


# --- optimizer state in DefaultTrainer's checkpoints ---------------------------------------------


def _default_trainer_saves_inner_state() -> bool:
    from detectron2.engine import DefaultTrainer
    from detectron2.engine.train_loop import TrainerBase

    return DefaultTrainer.state_dict is not TrainerBase.state_dict


class TrainerStateBackport:
    """Mixin for a ``DefaultTrainer`` subclass (put it first among the bases): checkpoints carry
    the inner ``SimpleTrainer``'s state under ``"_trainer"``, so a resumed run keeps its SGD
    momentum instead of restarting it from 0. Detectron2 v0.6 saves only the iteration and the
    hook states; later versions save this same key, and there the mixin adds nothing."""

    def state_dict(self):
        ret = super().state_dict()
        if "_trainer" not in ret:
            ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if _default_trainer_saves_inner_state():
            return
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        else:
            logger.warning("The checkpoint has no optimizer state: resuming with a fresh optimizer")


# --- numpy aliases for lvis-api ------------------------------------------------------------------

# lvis 0.5.3's LVISEval.accumulate calls .astype(dtype=np.float); np.float meant the builtin.
_LVIS_NUMPY_ALIASES = {"float": float}


@contextlib.contextmanager
def lvis_numpy_aliases() -> Iterator[None]:
    """Within the block, the numpy aliases lvis-api uses exist; afterwards numpy is as before.
    A no-op where numpy still has them (< 1.24) or lvis-api no longer needs them (> 0.5.3)."""
    try:
        lvis_version = _version(metadata.version("lvis"))
    except metadata.PackageNotFoundError:
        lvis_version = ()
    missing = {
        name: value for name, value in _LVIS_NUMPY_ALIASES.items() if name not in np.__dict__
    }
    if lvis_version > (0, 5, 3):
        missing = {}
    for name, value in missing.items():
        setattr(np, name, value)
    try:
        yield
    finally:
        for name in missing:
            np.__dict__.pop(name, None)
