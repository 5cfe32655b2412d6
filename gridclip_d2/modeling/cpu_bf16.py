"""bfloat16 inference on the CPU: autocast where the CPU has bfloat16 arithmetic units.

``MODEL.GRIDCLIP.CPU_BF16`` (the predictor's and demo's ``--bf16``) runs GridCLIP's backbone, neck
and head convolutions under ``torch.autocast("cpu", dtype=torch.bfloat16)``; the cosine logits,
the scores and the decoding stay in float32 (the head casts the grid embedding back before it
normalises it). oneDNN runs bfloat16 convolutions on AMX tiles or AVX-512 BF16 instructions; on a
CPU without either it would emulate them, slower than float32, so there the option logs why and
runs float32.

torch has no public query for these units; it has ``torch.cpu._is_amx_tile_supported`` and
``torch.cpu._is_avx512_bf16_supported`` (private, present since 2.2), read here with the Linux
``/proc/cpuinfo`` flags as the fallback.
"""

import functools
import logging
from typing import Optional

import torch

__all__ = ["cpu_bf16_units", "resolve_cpu_bf16"]

logger = logging.getLogger(__name__)


def _cpuinfo_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.lru_cache(maxsize=None)
def cpu_bf16_units() -> Optional[str]:
    """``"AMX"`` or ``"AVX-512 BF16"``: this CPU's bfloat16 units (AMX first), or None."""
    probes = (
        ("AMX", "_is_amx_tile_supported", "amx_bf16"),
        ("AVX-512 BF16", "_is_avx512_bf16_supported", "avx512_bf16"),
    )
    flags = None
    for name, torch_probe, flag in probes:
        probe = getattr(torch.cpu, torch_probe, None)
        if probe is not None:
            if probe():
                return name
            continue
        if flags is None:
            flags = _cpuinfo_flags()
        if flag in flags:
            return name
    return None


def resolve_cpu_bf16(requested: bool, device: str, option: str = "MODEL.GRIDCLIP.CPU_BF16") -> bool:
    """Whether bfloat16 CPU inference runs: ``requested`` on a CPU device whose CPU has the units.
    Logs the decision when it was requested (and why float32 runs instead)."""
    if not requested:
        return False
    if not str(device).startswith("cpu"):
        logger.info("%s applies to the CPU; on %s it is ignored (use AMP on a GPU)", option, device)
        return False
    units = cpu_bf16_units()
    if units is None:
        logger.warning(
            "%s: this CPU has neither AMX nor AVX-512 BF16 units (bfloat16 would be emulated, "
            "slower than float32); running float32",
            option,
        )
        return False
    logger.info("%s: bfloat16 inference on this CPU's %s units", option, units)
    return True
