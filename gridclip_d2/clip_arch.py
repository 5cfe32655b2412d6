"""CLIP ResNet architectures: the arguments of ``clip.model.CLIP`` for each named model.

``CLIPArch`` holds exactly the arguments of ``clip.model.CLIP.__init__`` so that
``clip.model.CLIP(**dataclasses.asdict(arch))`` builds the reference model. ``CLIP_ARCHS`` names the
OpenAI ResNet models (the values ``clip.build_model`` infers from their checkpoints) and the reduced
``RNtiny`` / ``RNtiny96`` (the same ModifiedResNet class with one block per stage and narrow
channels; the second is the small CLIP pretrained for the embedded CPU default). ``infer_arch``
reads an architecture off an OpenAI-layout state dict the way ``clip.model.build_model`` does.

A table of numbers with no torch and no package imports, so that the config, the data mapper and the
model all read it (the data layer and the model layer do not import each other).
"""

import dataclasses
from typing import Dict, Mapping, Optional, Tuple

__all__ = ["CLIPArch", "CLIP_ARCHS", "infer_arch", "get_arch", "arch_name"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class CLIPArch:
    """The arguments of ``clip.model.CLIP.__init__`` (ResNet vision towers only here)."""

    embed_dim: int
    image_resolution: int
    vision_layers: Tuple[int, int, int, int]
    vision_width: int
    vision_patch_size: Optional[int] = None
    context_length: int
    vocab_size: int
    transformer_width: int
    transformer_heads: int
    transformer_layers: int

    def as_kwargs(self) -> dict:
        """Keyword arguments of ``clip.model.CLIP`` (``vision_layers`` as a tuple)."""
        return dataclasses.asdict(self)

    @property
    def vision_heads(self) -> int:
        # as clip.model.CLIP: one attention-pool head per 64 channels of res5 (width * 32)
        return self.vision_width * 32 // 64


def _openai(embed_dim, resolution, layers, width, text_width):
    # every OpenAI ResNet CLIP has a 12-layer text transformer with 64-channel heads
    return CLIPArch(
        embed_dim=embed_dim,
        image_resolution=resolution,
        vision_layers=layers,
        vision_width=width,
        vision_patch_size=None,
        context_length=77,
        vocab_size=49408,
        transformer_width=text_width,
        transformer_heads=text_width // 64,
        transformer_layers=12,
    )


# Reduced model of the embedded default: res2..res5 channels 64/128/256/512, 8 pool heads.
_RNTINY = CLIPArch(
    embed_dim=128,
    image_resolution=224,
    vision_layers=(1, 1, 1, 1),
    vision_width=16,
    vision_patch_size=None,
    context_length=77,
    vocab_size=49408,
    transformer_width=128,
    transformer_heads=2,
    transformer_layers=2,
)

CLIP_ARCHS: Dict[str, CLIPArch] = {
    "RN50": _openai(1024, 224, (3, 4, 6, 3), 64, 512),
    "RN101": _openai(512, 224, (3, 4, 23, 3), 64, 512),
    "RN50x4": _openai(640, 288, (4, 6, 10, 6), 80, 640),
    "RN50x16": _openai(768, 384, (6, 8, 18, 8), 96, 768),
    "RN50x64": _openai(1024, 448, (3, 15, 36, 10), 128, 1024),
    "RNtiny": _RNTINY,
    # RNtiny at its pretraining resolution (96 px, a 3 x 3 attention-pool grid) with a 32-token
    # context: the small CLIP that tools/pretrain_clip.py trains on synthetic image-caption pairs.
    "RNtiny96": dataclasses.replace(_RNTINY, image_resolution=96, context_length=32),
}


def get_arch(arch) -> CLIPArch:
    """``CLIPArch`` from a name in ``CLIP_ARCHS`` (or a ``CLIPArch``, returned as is)."""
    if isinstance(arch, CLIPArch):
        return arch
    if arch not in CLIP_ARCHS:
        raise KeyError(
            f"Unknown CLIP architecture {arch!r} (MODEL.CLIP.ARCH); known: {sorted(CLIP_ARCHS)}"
        )
    return CLIP_ARCHS[arch]


def arch_name(arch: CLIPArch) -> str:
    """The name of ``arch`` in ``CLIP_ARCHS``, or its field values when it has none."""
    for name, known in CLIP_ARCHS.items():
        if known == arch:
            return name
    return repr(arch)


def _require(state_dict: Mapping, key: str):
    if key not in state_dict:
        raise KeyError(
            f"Not an OpenAI-layout CLIP ResNet state dict: key {key!r} is missing "
            f"(found {len(state_dict)} keys, e.g. {sorted(state_dict)[:5]})"
        )
    return state_dict[key]


def infer_arch(state_dict: Mapping) -> CLIPArch:
    """Architecture of an OpenAI-layout CLIP state dict, inferred as
    ``clip.model.build_model`` does."""
    if "visual.proj" in state_dict:
        raise ValueError(
            "This is a CLIP ViT checkpoint; only CLIP ResNet (RN*) models are supported"
        )
    layers = tuple(
        len({k.split(".")[2] for k in state_dict if k.startswith(f"visual.layer{b}.")})
        for b in (1, 2, 3, 4)
    )
    width = _require(state_dict, "visual.layer1.0.conv1.weight").shape[0]
    num_pos = _require(state_dict, "visual.attnpool.positional_embedding").shape[0]
    grid = round((num_pos - 1) ** 0.5)
    if grid * grid + 1 != num_pos:
        raise ValueError(
            f"visual.attnpool.positional_embedding has {num_pos} rows, not grid**2 + 1"
        )
    text_width = _require(state_dict, "ln_final.weight").shape[0]
    return CLIPArch(
        embed_dim=_require(state_dict, "text_projection").shape[1],
        image_resolution=grid * 32,
        vision_layers=layers,
        vision_width=width,
        vision_patch_size=None,
        context_length=_require(state_dict, "positional_embedding").shape[0],
        vocab_size=_require(state_dict, "token_embedding.weight").shape[0],
        transformer_width=text_width,
        transformer_heads=text_width // 64,
        transformer_layers=len(
            {k.split(".")[2] for k in state_dict if k.startswith("transformer.resblocks.")}
        ),
    )
