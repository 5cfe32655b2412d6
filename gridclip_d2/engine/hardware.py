"""Adapting a config to the machine it runs on."""

import logging

import torch

__all__ = ["adapt_cfg_to_hardware"]

logger = logging.getLogger(__name__)


def adapt_cfg_to_hardware(cfg):
    """Return ``cfg`` (a clone when changed) that can run on this machine, logging each change.

    Without CUDA: MODEL.DEVICE "cuda*" becomes "cpu"; SOLVER.AMP.ENABLED becomes False on CPU
    (Detectron2's AMPTrainer asserts CUDA, and bf16 autocast on CPU was slower than fp32).
    """
    changes = {}
    device = cfg.MODEL.DEVICE
    if device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(f"MODEL.DEVICE is '{device}' but CUDA is not available: running on cpu")
        changes["MODEL.DEVICE"] = device = "cpu"
    if cfg.SOLVER.AMP.ENABLED and not device.startswith("cuda"):
        logger.warning("SOLVER.AMP.ENABLED is True but the model runs on CPU: AMP turned off")
        changes["SOLVER.AMP.ENABLED"] = False
    if not changes:
        return cfg
    cfg = cfg.clone()
    frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.merge_from_list([x for kv in changes.items() for x in kv])
    if frozen:
        cfg.freeze()
    return cfg
