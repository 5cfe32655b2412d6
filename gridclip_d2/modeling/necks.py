"""Necks on the CLIP ResNet backbone, registered in Detectron2's BACKBONE_REGISTRY.

* ``build_clip_resnet_fpn_backbone``: Detectron2's :class:`FPN` on MODEL.FPN.IN_FEATURES (res3..res5
  -> p3..p5) with ``LastLevelP6P7`` computed from p5 (as FCOS): p3..p7, strides 8..128.
* ``build_clip_resnet_bifpn_backbone``: the :class:`~gridclip_d2.modeling.bifpn.BiFPN` on
  MODEL.BIFPN.IN_FEATURES: p3..p7, strides 8..128.

Both keep the :class:`~gridclip_d2.modeling.clip_resnet.CLIPResNet` as ``.bottom_up`` (the
meta-architecture reaches CLIP's attention pool through it).
"""
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7

from .bifpn import BiFPN
from .clip_resnet import build_clip_resnet_backbone
from .config_checks import check_in_features

__all__ = ["build_clip_resnet_fpn_backbone", "build_clip_resnet_bifpn_backbone"]

_CLIP_OUTPUTS = "the CLIP backbone (MODEL.CLIP.OUT_FEATURES)"


@BACKBONE_REGISTRY.register()
def build_clip_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """CLIP ResNet + Detectron2 FPN (MODEL.FPN.*) + P6/P7 from p5."""
    bottom_up = build_clip_resnet_backbone(cfg, input_shape)
    in_features = list(cfg.MODEL.FPN.IN_FEATURES)
    check_in_features(in_features, bottom_up.output_shape(), "MODEL.FPN.IN_FEATURES", _CLIP_OUTPUTS)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(out_channels, out_channels, in_feature="p5"),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_clip_resnet_bifpn_backbone(cfg, input_shape: ShapeSpec) -> BiFPN:
    """CLIP ResNet + BiFPN (MODEL.BIFPN.*): p3..p7."""
    bottom_up = build_clip_resnet_backbone(cfg, input_shape)
    in_features = list(cfg.MODEL.BIFPN.IN_FEATURES)
    check_in_features(in_features, bottom_up.output_shape(), "MODEL.BIFPN.IN_FEATURES", _CLIP_OUTPUTS)
    return BiFPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=cfg.MODEL.BIFPN.OUT_CHANNELS,
        num_repeats=cfg.MODEL.BIFPN.NUM_REPEATS,
        norm=cfg.MODEL.BIFPN.NORM,
        num_extra_levels=2,
    )
