"""Checks of module arguments shared by the neck, the BiFPN, the head and the meta-architecture,
each naming the config key at fault."""

from typing import Iterable, Sequence

__all__ = ["check_group_norm", "check_in_features"]


def check_in_features(
    in_features: Sequence[str], available: Iterable[str], key: str, producer: str
) -> None:
    """``in_features`` (config ``key``) must be a non-empty subset of ``available``, the outputs of
    ``producer`` (e.g. "the CLIP backbone (MODEL.CLIP.OUT_FEATURES)")."""
    available = list(available)
    missing = [f for f in in_features if f not in available]
    if missing or not in_features:
        raise ValueError(
            f"{key} {list(in_features)} must be a non-empty subset of the outputs of {producer}: "
            f"{available}; missing {missing}"
        )


def check_group_norm(norm: str, channels: int, key: str, channels_key: str) -> None:
    """``norm`` (config ``key``) "GN" builds ``GroupNorm(32, channels)``: 32 must divide the
    channels (given by ``channels_key``)."""
    if norm == "GN" and channels % 32 != 0:
        raise ValueError(
            f"{key}='GN' uses GroupNorm(32, C), but {channels_key} gives {channels} channels, "
            "not a "
            f"multiple of 32: use a multiple of 32 or another {key}"
        )
