"""Necks on the CLIP ResNet backbone, registered in Detectron2's BACKBONE_REGISTRY.

* ``build_clip_resnet_fpn_backbone``: :class:`CLIPFPN`, Detectron2's :class:`FPN` on
  MODEL.FPN.IN_FEATURES (res3..res5 -> p3..p5) with ``LastLevelP6P7`` computed from p5 (as FCOS):
  p3..p7, strides 8..128.
* ``build_clip_resnet_bifpn_backbone``: :class:`CLIPBiFPN`, the
  :class:`~gridclip_d2.modeling.bifpn.BiFPN` on MODEL.BIFPN.IN_FEATURES: p3..p7, strides 8..128.

Both keep the :class:`~gridclip_d2.modeling.clip_resnet.CLIPResNet` as ``.bottom_up`` (checkpoint
keys ``backbone.bottom_up.*``). With MODEL.GRIDCLIP.DENSE_CLIP_LEVELS set they also output
``"dense_clip"``: CLIP's dense embedding of res5 (N x D x H/32 x W/32, the attention pool's
projections at every location), which the head adds to those levels' grid embeddings.
"""

from typing import Dict

from torch import Tensor
from torch.nn import functional as F

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7

from .bifpn import BiFPN
from .clip_resnet import build_clip_resnet_backbone
from .config_checks import check_in_features
from .inference_weights import conv_forward

__all__ = [
    "DENSE_CLIP",
    "CLIPFPN",
    "CLIPBiFPN",
    "build_clip_resnet_fpn_backbone",
    "build_clip_resnet_bifpn_backbone",
]

DENSE_CLIP = "dense_clip"  # the necks' output holding CLIP's dense embedding of res5
_CLIP_OUTPUTS = "the CLIP backbone (MODEL.CLIP.OUT_FEATURES)"


class _DenseCLIPNeck:
    """
    A neck whose ``bottom_up`` is a CLIPResNet and which, with ``dense_clip=True``, outputs
    ``bottom_up.dense_embedding(res5)`` as :data:`DENSE_CLIP` beside its pyramid levels. Subclasses
    provide ``pyramid(bottom_up_features) -> {"p3": ..., ...}``.
    """

    def __init__(self, *, dense_clip: bool = False, **neck_kwargs):
        super().__init__(**neck_kwargs)
        self.dense_clip = bool(dense_clip)
        if self.dense_clip:
            if not hasattr(self.bottom_up, "dense_embedding"):
                raise ValueError(
                    "MODEL.GRIDCLIP.DENSE_CLIP_LEVELS needs a CLIPResNet bottom-up backbone, got "
                    f"{type(self.bottom_up).__name__}"
                )
            if "res5" not in self.bottom_up.output_shape():
                raise ValueError(
                    "MODEL.GRIDCLIP.DENSE_CLIP_LEVELS needs 'res5' in MODEL.CLIP.OUT_FEATURES, got "
                    f"{list(self.bottom_up.output_shape())}"
                )

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """x: N x 3 x H x W normalised RGB -> the pyramid levels (+ :data:`DENSE_CLIP`)."""
        bottom_up_features = self.bottom_up(x)
        outputs = self.pyramid(bottom_up_features)
        if self.dense_clip:
            outputs[DENSE_CLIP] = self.bottom_up.dense_embedding(bottom_up_features["res5"])
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        shapes = super().output_shape()
        if self.dense_clip:
            res5 = self.bottom_up.output_shape()["res5"]
            shapes[DENSE_CLIP] = ShapeSpec(channels=self.bottom_up.embed_dim, stride=res5.stride)
        return shapes


class CLIPFPN(_DenseCLIPNeck, FPN):
    """Detectron2's :class:`FPN` (same modules, same checkpoint keys), optionally with the
    :data:`DENSE_CLIP` output."""

    def pyramid(self, bottom_up_features: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """``FPN.forward`` after its ``bottom_up`` call, written out here because Detectron2's
        runs the bottom-up network itself and returns only the pyramid: the same modules in the
        same order (at inference on weights prepared once, :mod:`.inference_weights`), so the same
        numbers up to float rounding (a test compares the two)."""
        lateral = conv_forward(self.lateral_convs[0], bottom_up_features[self.in_features[-1]])
        results = [conv_forward(self.output_convs[0], lateral)]
        # lateral_convs / output_convs / reversed in_features: coarsest level first
        for name, lateral_conv, output_conv in zip(
            self.in_features[-2::-1], self.lateral_convs[1:], self.output_convs[1:]
        ):
            top_down = F.interpolate(lateral, scale_factor=2.0, mode="nearest")
            lateral = conv_forward(lateral_conv, bottom_up_features[name]) + top_down
            if self._fuse_type == "avg":
                lateral /= 2
            results.insert(0, conv_forward(output_conv, lateral))
        if self.top_block is not None:
            top_in = self.top_block.in_feature
            if top_in in bottom_up_features:
                results.extend(self.top_block(bottom_up_features[top_in]))
            else:
                results.extend(self.top_block(results[self._out_features.index(top_in)]))
        return dict(zip(self._out_features, results))


class CLIPBiFPN(_DenseCLIPNeck, BiFPN):
    """The :class:`BiFPN`, optionally with the :data:`DENSE_CLIP` output."""


@BACKBONE_REGISTRY.register()
def build_clip_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> CLIPFPN:
    """CLIP ResNet + Detectron2 FPN (MODEL.FPN.*) + P6/P7 from p5."""
    bottom_up = build_clip_resnet_backbone(cfg, input_shape)
    in_features = list(cfg.MODEL.FPN.IN_FEATURES)
    check_in_features(in_features, bottom_up.output_shape(), "MODEL.FPN.IN_FEATURES", _CLIP_OUTPUTS)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return CLIPFPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(out_channels, out_channels, in_feature="p5"),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
        dense_clip=bool(cfg.MODEL.GRIDCLIP.DENSE_CLIP_LEVELS),
    )


@BACKBONE_REGISTRY.register()
def build_clip_resnet_bifpn_backbone(cfg, input_shape: ShapeSpec) -> CLIPBiFPN:
    """CLIP ResNet + BiFPN (MODEL.BIFPN.*): p3..p7."""
    bottom_up = build_clip_resnet_backbone(cfg, input_shape)
    in_features = list(cfg.MODEL.BIFPN.IN_FEATURES)
    check_in_features(
        in_features, bottom_up.output_shape(), "MODEL.BIFPN.IN_FEATURES", _CLIP_OUTPUTS
    )
    return CLIPBiFPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=cfg.MODEL.BIFPN.OUT_CHANNELS,
        num_repeats=cfg.MODEL.BIFPN.NUM_REPEATS,
        norm=cfg.MODEL.BIFPN.NORM,
        num_extra_levels=2,
        dense_clip=bool(cfg.MODEL.GRIDCLIP.DENSE_CLIP_LEVELS),
    )
