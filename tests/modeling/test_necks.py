"""FPN and BiFPN necks: shapes and strides from a config, BiFPN fusion weights and gradients."""

import pytest
import torch
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone, build_backbone
from detectron2.modeling.backbone.fpn import FPN

from gridclip_d2.modeling.bifpn import BiFPN, FastNormalizedFusion
from gridclip_d2.modeling.clip_resnet import CLIPResNet

LEVELS = ["p3", "p4", "p5", "p6", "p7"]
STRIDES = [8, 16, 32, 64, 128]


class _TinyBottomUp(Backbone):
    """Three strided convs: res3 (stride 8, 8 ch), res4 (16, 12 ch), res5 (32, 16 ch)."""

    def __init__(self):
        super().__init__()
        self.c3 = nn.Conv2d(3, 8, 8, stride=8)
        self.c4 = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.c5 = nn.Conv2d(12, 16, 3, stride=2, padding=1)

    def forward(self, x):
        r3 = self.c3(x)
        r4 = self.c4(r3)
        return {"res3": r3, "res4": r4, "res5": self.c5(r4)}

    def output_shape(self):
        return {
            "res3": ShapeSpec(channels=8, stride=8),
            "res4": ShapeSpec(channels=12, stride=16),
            "res5": ShapeSpec(channels=16, stride=32),
        }


def _bifpn(**kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("norm", "GN")
    in_features = ["res3", "res4", "res5"]
    return BiFPN(_TinyBottomUp(), in_features, out_channels=32, num_repeats=2, **kwargs)


def test_bifpn_shapes_strides_divisibility():
    neck = _bifpn()
    shapes = neck.output_shape()
    assert list(shapes) == LEVELS
    assert [shapes[k].stride for k in LEVELS] == STRIDES
    assert all(shapes[k].channels == 32 for k in LEVELS)
    assert neck.size_divisibility == 128
    assert isinstance(neck.bottom_up, _TinyBottomUp)
    out = neck(torch.randn(2, 3, 256, 128))
    for k, s in zip(LEVELS, STRIDES):
        assert out[k].shape == (2, 32, 256 // s, 128 // s), k
    # sizes that are not multiples of 128 still work (nearest resize absorbs odd sizes)
    out = neck(torch.randn(1, 3, 200, 72))
    assert [tuple(out[k].shape[-2:]) for k in LEVELS] == [(25, 9), (13, 5), (7, 3), (4, 2), (2, 1)]


def test_fast_normalized_fusion_weights():
    fuse = FastNormalizedFusion(3)
    with torch.no_grad():
        fuse.weight.copy_(torch.tensor([2.0, -1.0, 1.0]))
    w = fuse.normalized_weights()
    assert torch.allclose(w, torch.tensor([2.0, 0.0, 1.0]) / (3.0 + 1e-4))
    a, b, c = (torch.full((1, 1, 2, 2), v) for v in (1.0, 5.0, 4.0))
    assert torch.allclose(fuse([a, b, c]), torch.full((1, 1, 2, 2), 6.0 / 3.0001))
    with pytest.raises(ValueError, match="expected 3 inputs"):
        fuse([a, b])


def test_bifpn_fusion_weights_stay_normalised_and_all_get_gradients():
    neck = _bifpn()
    fusions = [m for m in neck.modules() if isinstance(m, FastNormalizedFusion)]
    # per layer: 4 top-down nodes + 4 bottom-up nodes (3 with 3 inputs, the top one with 2)
    assert len(fusions) == 2 * 8
    assert sorted(f.weight.numel() for f in fusions[:8]) == [2] * 5 + [3] * 3
    opt = torch.optim.SGD(neck.parameters(), lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        out = neck(torch.randn(2, 3, 128, 128))
        loss = sum((v - 1.0).pow(2).mean() for v in out.values())
        loss.backward()
        for f in fusions:
            assert f.weight.grad is not None and (f.weight.grad != 0).all()
        opt.step()
    for f in fusions:
        w = f.normalized_weights()
        assert (w >= 0).all() and w.sum() <= 1.0 and w.sum() > 0.99


def test_bifpn_bad_arguments():
    with pytest.raises(ValueError, match="MODEL.BIFPN.OUT_CHANNELS"):
        BiFPN(_TinyBottomUp(), ["res3", "res4", "res5"], out_channels=48, norm="GN")
    BiFPN(_TinyBottomUp(), ["res3", "res4", "res5"], out_channels=48, norm="BN")  # fine
    with pytest.raises(ValueError, match="res6"):
        BiFPN(_TinyBottomUp(), ["res4", "res5", "res6"], out_channels=32)
    with pytest.raises(ValueError, match="doubling"):
        BiFPN(_TinyBottomUp(), ["res3", "res5"], out_channels=32)


@pytest.fixture
def neck_cfg(gridclip_cfg):
    cfg = gridclip_cfg(ARCH="RNtiny", WEIGHTS="", NORM="BN")
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 64
    cfg.MODEL.BIFPN.OUT_CHANNELS = 64
    cfg.MODEL.BIFPN.NUM_REPEATS = 2
    # RGB pixel stats: the CLIP backbone takes 3 channels
    cfg.MODEL.PIXEL_MEAN = [122.7709383, 116.7460125, 104.09373615]
    cfg.MODEL.PIXEL_STD = [68.5005327, 66.6321579, 70.3231804]
    return cfg


@pytest.mark.parametrize(
    "name,divisibility",
    [
        ("build_clip_resnet_fpn_backbone", 32),
        ("build_clip_resnet_bifpn_backbone", 128),
    ],
)
def test_necks_from_config(neck_cfg, name, divisibility):
    neck_cfg.MODEL.BACKBONE.NAME = name
    neck = build_backbone(neck_cfg)
    assert isinstance(neck.bottom_up, CLIPResNet)
    assert neck.bottom_up.embed_dim == 128
    shapes = neck.output_shape()
    assert list(shapes) == LEVELS
    assert [shapes[k].stride for k in LEVELS] == STRIDES
    assert all(shapes[k].channels == 64 for k in LEVELS)
    assert neck.size_divisibility == divisibility
    out = neck(torch.randn(2, 3, 128, 256))
    for k, s in zip(LEVELS, STRIDES):
        assert out[k].shape == (2, 64, 128 // s, 256 // s), k
        assert torch.isfinite(out[k]).all()


def test_neck_config_errors(neck_cfg):
    neck_cfg.MODEL.BACKBONE.NAME = "build_clip_resnet_fpn_backbone"
    neck_cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4"]
    with pytest.raises(ValueError, match="MODEL.FPN.IN_FEATURES"):
        build_backbone(neck_cfg)
    neck_cfg.MODEL.BACKBONE.NAME = "build_clip_resnet_bifpn_backbone"
    neck_cfg.MODEL.BIFPN.OUT_CHANNELS = 40
    with pytest.raises(ValueError, match="MODEL.BIFPN.OUT_CHANNELS"):
        build_backbone(neck_cfg)


@pytest.mark.parametrize("fuse_type", ["sum", "avg"])
def test_clip_fpn_pyramid_is_detectron2_fpn(neck_cfg, fuse_type):
    """CLIPFPN writes out FPN's top-down pass; it must give FPN.forward's numbers (its convs read
    weights prepared channels-last once, which FPN.forward's oneDNN calls reorder themselves: the
    same arithmetic, compared up to float32 rounding rather than bit for bit)."""
    neck_cfg.MODEL.BACKBONE.NAME = "build_clip_resnet_fpn_backbone"
    neck_cfg.MODEL.FPN.FUSE_TYPE = fuse_type
    neck = build_backbone(neck_cfg).eval()
    assert isinstance(neck, FPN)
    x = torch.randn(2, 3, 96, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, reference = neck(x), FPN.forward(neck, x)
    assert list(ours) == list(reference) == LEVELS
    for k in LEVELS:
        assert (ours[k] - reference[k]).abs().max() <= 1e-6 * reference[k].abs().max(), k


@pytest.mark.parametrize(
    "name", ["build_clip_resnet_fpn_backbone", "build_clip_resnet_bifpn_backbone"]
)
def test_necks_output_the_dense_clip_embedding_when_asked(neck_cfg, name):
    neck_cfg.MODEL.BACKBONE.NAME = name
    plain = build_backbone(neck_cfg)
    assert "dense_clip" not in plain.output_shape()
    neck_cfg.MODEL.GRIDCLIP.DENSE_CLIP_LEVELS = ["p5"]
    neck = build_backbone(neck_cfg).eval()
    assert neck.output_shape()["dense_clip"] == ShapeSpec(channels=128, stride=32)
    x = torch.randn(1, 3, 128, 192, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = neck(x)
        expected = neck.bottom_up.dense_embedding(neck.bottom_up(x)["res5"])
    assert set(out) == set(LEVELS) | {"dense_clip"}
    assert out["dense_clip"].shape == (1, 128, 4, 6)
    assert torch.equal(out["dense_clip"], expected)

    neck_cfg.MODEL.CLIP.OUT_FEATURES = ["res3", "res4"]
    neck_cfg.MODEL.FPN.IN_FEATURES = neck_cfg.MODEL.BIFPN.IN_FEATURES = ["res3", "res4"]
    with pytest.raises(
        ValueError, match="DENSE_CLIP_LEVELS needs 'res5' in MODEL.CLIP.OUT_FEATURES"
    ):
        build_backbone(neck_cfg)
