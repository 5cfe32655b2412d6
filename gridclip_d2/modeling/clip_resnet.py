"""CLIP's ModifiedResNet as a Detectron2 backbone, with CLIP's attention pool on top.

Naming follows Detectron2's ResNet: ``stem`` (CLIP's three 3x3 convs + avgpool, stride 4) and
``res2..res5`` (``layer1..layer4``, strides 4/8/16/32; channels ``width * 4 * 2**i``,
256/512/1024/2048 for RN50). The ``clip`` package's ``ModifiedResNet`` is kept whole as the
submodule ``visual``, so OpenAI's ``visual.*`` keys map onto it one to one (``load_clip_visual``).

Input: ``N x 3 x H x W`` RGB, normalised with CLIP's mean/std on the 0-1 scale (the
meta-architecture does it with PIXEL_MEAN/STD; ``normalize_clip_input`` does it for uint8 teacher
crops).
Besides the feature maps, the backbone gives CLIP's joint image-text space:

- ``pooled_embedding(res5) -> N x D``: CLIP's attention pool (positional embedding resized
  bicubically when res5 is not the native ``image_resolution / 32`` grid);
- ``dense_embedding(res5) -> N x D x h x w``: the attention pool's value and output projections
  applied at every location (MaskCLIP), i.e. what each location contributes to the pooled
  embedding;
- ``encode_image(x) -> N x D``: stem..res5 + attention pool, equal to ``clip``'s ``encode_image``.
"""

import logging
from typing import Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from clip.model import ModifiedResNet
from torch import nn

from detectron2.config import configurable
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ..clip_arch import CLIPArch, arch_name, get_arch
from .clip_weights import clip_state_dict_from_cfg, load_exact
from .inference_weights import conv_norm_forward, use_prepared_weights

__all__ = [
    "CLIPResNet",
    "build_clip_resnet_backbone",
    "build_clip_teacher",
    "normalize_clip_input",
    "CLIP_PIXEL_MEAN",
    "CLIP_PIXEL_STD",
]

logger = logging.getLogger(__name__)

# CLIP's RGB normalisation on the 0-1 scale (clip.clip._transform).
CLIP_PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_PIXEL_STD = (0.26862954, 0.26130258, 0.27577711)

_STAGES = ("res2", "res3", "res4", "res5")
_STEM_MODULES = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")
_NORMS = ("FrozenBN", "BN", "SyncBN")


def normalize_clip_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 RGB ``N x 3 x S x S`` (0-255) -> float32 normalised with CLIP's mean/std."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"normalize_clip_input expects uint8 RGB images N x 3 x S x S, got {images.dtype} "
            f"{tuple(images.shape)}"
        )
    mean = images.new_tensor(CLIP_PIXEL_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = images.new_tensor(CLIP_PIXEL_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


class CLIPResNet(Backbone):
    """CLIP ModifiedResNet backbone returning ``res2..res5`` (any subset) plus CLIP embeddings."""

    @configurable
    def __init__(
        self,
        arch: Union[str, CLIPArch] = "RN50",
        *,
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        norm: str = "FrozenBN",
        freeze_at: int = 0,
        state_dict: Optional[Mapping[str, torch.Tensor]] = None,
        freeze_attnpool: bool = True,
    ):
        """
        Args:
            arch: a name in ``CLIP_ARCHS`` or a ``CLIPArch``.
            out_features: stages returned by ``forward``, a subset of res2..res5.
            norm: "FrozenBN" (all BatchNorms frozen), "BN" (trainable) or "SyncBN" (torch's
                nn.SyncBatchNorm: synchronises only across GPU processes).
            freeze_at: 0 nothing, 1 stem, 2 stem + res2, ..., 5 stem + all four stages frozen
                (requires_grad False, FrozenBN), as Detectron2's ResNet.
            state_dict: OpenAI-layout CLIP state dict whose ``visual.*`` entries are loaded (other
                keys are ignored); None keeps ``clip``'s own initialisation.
            freeze_attnpool: keep the attention pool (CLIP's projection into the joint space)
                fixed; it is used only through ``pooled/dense_embedding``.
        """
        super().__init__()
        self.arch = get_arch(arch)
        if norm not in _NORMS:
            raise ValueError(f"MODEL.CLIP.NORM must be one of {_NORMS}, got {norm!r}")
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"MODEL.BACKBONE.FREEZE_AT must be in 0..5, got {freeze_at}")
        unknown = [f for f in out_features if f not in _STAGES]
        if unknown or not out_features:
            raise ValueError(
                f"MODEL.CLIP.OUT_FEATURES must be a non-empty subset of {_STAGES}, "
                f"got {list(out_features)}"
            )

        a = self.arch
        self.visual = ModifiedResNet(
            layers=a.vision_layers,
            output_dim=a.embed_dim,
            heads=a.vision_heads,
            input_resolution=a.image_resolution,
            width=a.vision_width,
        )
        if state_dict is not None:
            self.load_clip_visual(state_dict)

        self._out_features = [f for f in _STAGES if f in out_features]
        self._out_feature_strides = {f"res{i + 2}": 4 * 2**i for i in range(4)}
        self._out_feature_channels = {f"res{i + 2}": a.vision_width * 4 * 2**i for i in range(4)}
        self.embed_dim = a.embed_dim
        self.norm = norm

        if norm == "FrozenBN":
            self.visual = FrozenBatchNorm2d.convert_frozen_batchnorm(self.visual)
        elif norm == "SyncBN":
            self.visual = nn.SyncBatchNorm.convert_sync_batchnorm(self.visual)
        self.freeze(freeze_at)
        if freeze_attnpool:
            for p in self.visual.attnpool.parameters():
                p.requires_grad = False

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec = None):
        if input_shape is not None and input_shape.channels != 3:
            raise ValueError(
                f"The CLIP ResNet backbone takes 3-channel RGB input; MODEL.PIXEL_MEAN has "
                f"{input_shape.channels} channels"
            )
        return {
            "arch": cfg.MODEL.CLIP.ARCH,
            "out_features": list(cfg.MODEL.CLIP.OUT_FEATURES),
            "norm": cfg.MODEL.CLIP.NORM,
            "freeze_at": cfg.MODEL.BACKBONE.FREEZE_AT,
            "state_dict": clip_state_dict_from_cfg(cfg),
        }

    # ------------------------------------------------------------------ weights and freezing
    def load_clip_visual(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Copy the ``visual.*`` entries of an OpenAI-layout CLIP state dict into ``self.visual``.

        One explicit mapping (``visual.<k>`` -> ``self.visual.<k>``) with a check that every key on
        both sides was used; BatchNorm's ``num_batches_tracked`` counters are skipped where the
        module is a FrozenBatchNorm2d (which has none).
        """
        prefix = "visual."
        given = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        load_exact(
            self.visual,
            given,
            f"visual ({self._arch_label()} ModifiedResNet)",
            prefix,
            ignore_unexpected=("num_batches_tracked",),
        )

    def _arch_label(self) -> str:
        return arch_name(self.arch)

    def _stage_modules(self) -> List[List[nn.Module]]:
        v = self.visual
        return [
            [getattr(v, n) for n in _STEM_MODULES],
            [v.layer1],
            [v.layer2],
            [v.layer3],
            [v.layer4],
        ]

    def freeze(self, freeze_at: int = 0) -> "CLIPResNet":
        """Freeze the stem (``freeze_at >= 1``) and the first ``freeze_at - 1`` stages.

        Frozen parts get ``requires_grad=False`` and FrozenBatchNorm2d, whatever MODEL.CLIP.NORM is.
        """
        v = self.visual
        for idx in range(min(freeze_at, 5)):
            for module in self._stage_modules()[idx]:
                for p in module.parameters():
                    p.requires_grad = False
            if idx == 0:
                for name in ("bn1", "bn2", "bn3"):
                    setattr(v, name, FrozenBatchNorm2d.convert_frozen_batchnorm(getattr(v, name)))
            else:
                name = f"layer{idx}"
                setattr(v, name, FrozenBatchNorm2d.convert_frozen_batchnorm(getattr(v, name)))
        return self

    # ------------------------------------------------------------------ forward
    @property
    def size_divisibility(self) -> int:
        return 32

    def _stem(self, x: torch.Tensor, prepared: bool = False) -> torch.Tensor:
        v = self.visual
        if prepared:
            x = _conv_norm(x, v.conv1, v.bn1, relu=True)
            x = _conv_norm(x, v.conv2, v.bn2, relu=True)
            x = _conv_norm(x, v.conv3, v.bn3, relu=True)
        else:
            x = v.relu1(v.bn1(v.conv1(x)))
            x = v.relu2(v.bn2(v.conv2(x)))
            x = v.relu3(v.bn3(v.conv3(x)))
        return v.avgpool(x)  # N x width x H/4 x W/4

    def _run(self, x: torch.Tensor, last: str) -> Dict[str, torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"CLIPResNet takes N x 3 x H x W input, got {tuple(x.shape)}")
        # inference (eval, no gradients): the same network on prepared weights, BatchNorm folded
        # into the convs (.inference_weights)
        prepared = use_prepared_weights(self)
        x = self._stem(x.type(self.visual.conv1.weight.dtype), prepared)
        outputs = {}
        for i, name in enumerate(_STAGES):
            layer = getattr(self.visual, f"layer{i + 1}")
            x = _prepared_layer(layer, x) if prepared else layer(x)
            outputs[name] = x
            if name == last:
                break
        return outputs

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """x: N x 3 x H x W normalised RGB -> {"res2": N x C2 x H/4 x W/4, ...,
        "res5": ... H/32}."""
        outputs = self._run(x, self._out_features[-1])
        return {k: outputs[k] for k in self._out_features}

    def pooled_embedding(self, res5: torch.Tensor) -> torch.Tensor:
        """CLIP's attention pool of ``res5`` (N x C5 x h x w) -> N x D."""
        pool = self.visual.attnpool
        h, w = res5.shape[-2:]
        native = self.arch.image_resolution // 32
        if (h, w) == (native, native):
            return pool(res5)
        # clip's AttentionPool2d holds a fixed native x native positional embedding; for other grids
        # the same computation is written out here with that embedding resized bicubically.
        pos = pool.positional_embedding  # (native**2 + 1) x C5
        grid = pos[1:].reshape(1, native, native, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:1], grid.flatten(2)[0].t()], dim=0)  # (h*w + 1) x C5
        x = res5.flatten(start_dim=2).permute(2, 0, 1)  # (hw) x N x C5
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
        x = x + pos[:, None, :].to(x.dtype)
        x, _ = F.multi_head_attention_forward(
            query=x[:1],
            key=x,
            value=x,
            embed_dim_to_check=x.shape[-1],
            num_heads=pool.num_heads,
            q_proj_weight=pool.q_proj.weight,
            k_proj_weight=pool.k_proj.weight,
            v_proj_weight=pool.v_proj.weight,
            in_proj_weight=None,
            in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0.0,
            out_proj_weight=pool.c_proj.weight,
            out_proj_bias=pool.c_proj.bias,
            use_separate_proj_weight=True,
            training=self.training,
            need_weights=False,
        )
        return x.squeeze(0)  # N x D

    def dense_embedding(self, res5: torch.Tensor) -> torch.Tensor:
        """Attention pool's v_proj then c_proj at every location: N x C5 x h x w ->
        N x D x h x w."""
        pool = self.visual.attnpool
        x = res5.permute(0, 2, 3, 1)  # N x h x w x C5
        x = F.linear(
            F.linear(x, pool.v_proj.weight, pool.v_proj.bias), pool.c_proj.weight, pool.c_proj.bias
        )
        return x.permute(0, 3, 1, 2)  # N x D x h x w

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """stem..res5 + attention pool: N x 3 x H x W -> N x D (clip's encode_image at native
        size)."""
        return self.pooled_embedding(self._run(x, "res5")["res5"])


def _conv_norm(x: torch.Tensor, conv: nn.Conv2d, norm: nn.Module, relu: bool) -> torch.Tensor:
    """``relu(norm(conv(x)))`` (or without the relu) on prepared weights, the norm folded into the
    conv where it can be (:mod:`.inference_weights`)."""
    return conv_norm_forward(x, conv, norm, torch.relu_ if relu else None)


def _prepared_layer(layer: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` for one of clip's ResNet stages (a Sequential of clip's ``Bottleneck``), each
    block's ops in the order of ``Bottleneck.forward``, on :func:`_conv_norm`."""
    for block in layer:
        out = _conv_norm(x, block.conv1, block.bn1, relu=True)
        out = _conv_norm(out, block.conv2, block.bn2, relu=True)
        out = _conv_norm(block.avgpool(out), block.conv3, block.bn3, relu=False)
        identity = x
        if block.downsample is not None:
            pool, conv, norm = block.downsample  # avgpool, 1x1 conv, norm
            identity = _conv_norm(pool(x), conv, norm, relu=False)
        x = out.add_(identity).relu_()
    return x


class _FrozenCLIPResNet(CLIPResNet):
    """A CLIPResNet without gradients that stays in eval mode whatever ``train()`` is asked (a
    fixed teacher)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)


@BACKBONE_REGISTRY.register()
def build_clip_resnet_backbone(cfg, input_shape: ShapeSpec) -> CLIPResNet:
    """CLIPResNet initialised from MODEL.CLIP.* (weights, arch, norm, out features), FREEZE_AT
    applied."""
    c = cfg.MODEL.CLIP
    logger.info(
        "CLIP %s backbone from %s, norm %s, FREEZE_AT %d",
        c.ARCH,
        c.WEIGHTS or f"random init (seed {c.INIT_SEED})",
        c.NORM,
        cfg.MODEL.BACKBONE.FREEZE_AT,
    )
    return CLIPResNet(cfg, input_shape)


def build_clip_teacher(cfg) -> CLIPResNet:
    """Frozen CLIP image encoder (FrozenBN, no gradients, eval mode forever) from MODEL.CLIP.*.

    Initialised from the same weights as the backbone (for ``WEIGHTS == ""``: the same seeded random
    CLIP). Input: ``normalize_clip_input`` of uint8 RGB crops; use ``encode_image``.
    """
    return _FrozenCLIPResNet(
        cfg.MODEL.CLIP.ARCH,
        out_features=("res5",),
        norm="FrozenBN",
        freeze_at=5,
        state_dict=clip_state_dict_from_cfg(cfg),
        freeze_attnpool=True,
    )
