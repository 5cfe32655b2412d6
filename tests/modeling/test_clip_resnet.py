"""CLIPResNet backbone: exact reproduction of clip's image tower, freezing, norms, key checks,
teacher."""

import clip
import pytest
import torch
from clip.model import CLIP, AttentionPool2d
from torch import nn

from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_backbone

from gridclip_d2.clip_arch import CLIP_ARCHS
from gridclip_d2.modeling.clip_resnet import (
    CLIP_PIXEL_MEAN,
    CLIP_PIXEL_STD,
    CLIPResNet,
    build_clip_teacher,
    normalize_clip_input,
)
from gridclip_d2.modeling.clip_weights import load_clip_state_dict

ALL_STAGES = ["res2", "res3", "res4", "res5"]
TOL = 1e-4


def _max_diff(a, b):
    return (a - b).abs().max().item()


def _clip_stages(visual, x):
    """res2..res5 of clip's own ModifiedResNet (its forward, cut before the attention pool)."""
    x = visual.relu1(visual.bn1(visual.conv1(x)))
    x = visual.relu2(visual.bn2(visual.conv2(x)))
    x = visual.relu3(visual.bn3(visual.conv3(x)))
    x = visual.avgpool(x)
    out = {}
    for i, name in enumerate(ALL_STAGES):
        x = getattr(visual, f"layer{i + 1}")(x)
        out[name] = x
    return out


@pytest.mark.parametrize("fmt", ["state_dict_path", "torchscript_path"])
def test_backbone_reproduces_clip(clip_tiny_checkpoints, gridclip_cfg, fmt):
    path = getattr(clip_tiny_checkpoints, fmt)
    cfg = gridclip_cfg(ARCH="RNtiny", WEIGHTS=path, OUT_FEATURES=ALL_STAGES)
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    backbone = build_backbone(cfg).eval()
    assert isinstance(backbone, CLIPResNet)
    reference = clip.load(path, device="cpu", jit=False)[0].float().eval()

    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref_embedding = reference.encode_image(x)
        ref_stages = _clip_stages(reference.visual, x)
        feats = backbone(x)
        assert _max_diff(backbone.encode_image(x), ref_embedding) < TOL
        assert _max_diff(backbone.pooled_embedding(feats["res5"]), ref_embedding) < TOL
        for name in ALL_STAGES:
            assert feats[name].shape == ref_stages[name].shape
            assert _max_diff(feats[name], ref_stages[name]) < TOL, name

        dense = backbone.dense_embedding(feats["res5"])  # N x D x 7 x 7
        assert dense.shape == (2, CLIP_ARCHS["RNtiny"].embed_dim, 7, 7)
        pool = reference.visual.attnpool
        res5 = ref_stages["res5"]
        for i in range(7):
            for j in range(7):
                expected = pool.c_proj(pool.v_proj(res5[:, :, i, j]))  # N x D
                assert _max_diff(dense[:, :, i, j], expected) < TOL


def test_output_shape_and_strides(clip_tiny_checkpoints):
    sd = load_clip_state_dict(clip_tiny_checkpoints.state_dict_path, "RNtiny")
    backbone = CLIPResNet("RNtiny", out_features=ALL_STAGES, state_dict=sd).eval()
    shapes = backbone.output_shape()
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {
        "res2": (64, 4),
        "res3": (128, 8),
        "res4": (256, 16),
        "res5": (512, 32),
    }
    assert backbone.size_divisibility == 32 and backbone.embed_dim == 128
    x = torch.randn(1, 3, 192, 256)  # not the native 224, not square
    with torch.no_grad():
        feats = backbone(x)
        for name, spec in shapes.items():
            assert feats[name].shape == (1, spec.channels, 192 // spec.stride, 256 // spec.stride)
        assert backbone.pooled_embedding(feats["res5"]).shape == (1, 128)
        assert backbone.dense_embedding(feats["res5"]).shape == (1, 128, 6, 8)
    only = CLIPResNet("RNtiny", out_features=["res3", "res5"], state_dict=sd)
    assert list(only.output_shape()) == ["res3", "res5"]
    assert list(only(x)) == ["res3", "res5"]


def test_pooled_embedding_interpolates_positions(clip_tiny_checkpoints):
    sd = load_clip_state_dict(clip_tiny_checkpoints.state_dict_path, "RNtiny")
    backbone = CLIPResNet("RNtiny", state_dict=sd).eval()
    pool = backbone.visual.attnpool
    # clip's own AttentionPool2d on a 9 x 9 grid, given the bicubically resized positions
    reference = AttentionPool2d(9, 512, pool.num_heads, 128)
    reference.load_state_dict(
        {k: v for k, v in pool.state_dict().items() if k != "positional_embedding"}, strict=False
    )
    grid = pool.positional_embedding[1:].reshape(1, 7, 7, 512).permute(0, 3, 1, 2)
    grid = nn.functional.interpolate(grid, size=(9, 9), mode="bicubic", align_corners=False)
    reference.positional_embedding.data = torch.cat(
        [pool.positional_embedding[:1], grid.flatten(2)[0].t()]
    )
    res5 = torch.randn(2, 512, 9, 9)
    with torch.no_grad():
        assert _max_diff(backbone.pooled_embedding(res5), reference(res5)) < TOL


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 3, 4, 5])
def test_freeze_at_follows_detectron2(gridclip_cfg, freeze_at):
    cfg = gridclip_cfg(ARCH="RNtiny", WEIGHTS="", NORM="BN")
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    backbone = build_backbone(cfg)
    v = backbone.visual
    parts = [
        [v.conv1, v.bn1, v.conv2, v.bn2, v.conv3, v.bn3],
        [v.layer1],
        [v.layer2],
        [v.layer3],
        [v.layer4],
    ]
    for idx, modules in enumerate(parts):
        frozen = idx < freeze_at
        for m in modules:
            assert all(p.requires_grad != frozen for p in m.parameters())
            bns = [
                b for b in [m, *m.modules()] if isinstance(b, (nn.BatchNorm2d, FrozenBatchNorm2d))
            ]
            assert all(isinstance(b, FrozenBatchNorm2d if frozen else nn.BatchNorm2d) for b in bns)
    assert not any(p.requires_grad for p in v.attnpool.parameters())


def test_frozen_stages_are_bit_identical_after_a_step(clip_tiny_checkpoints, gridclip_cfg):
    cfg = gridclip_cfg(ARCH="RNtiny", WEIGHTS=clip_tiny_checkpoints.state_dict_path, NORM="BN")
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    backbone = build_backbone(cfg).train()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in backbone.parameters() if p.requires_grad], lr=0.1)
    torch.manual_seed(0)
    feats = backbone(torch.randn(2, 3, 64, 64))
    sum(f.square().mean() for f in feats.values()).backward()
    optimizer.step()
    after = backbone.state_dict()
    frozen = ("visual.conv", "visual.bn", "visual.layer1.", "visual.attnpool.")
    for k, v in before.items():
        if k.startswith(frozen):
            assert torch.equal(after[k], v), k
    for name, p in backbone.named_parameters():
        if ("visual." + name.split("visual.", 1)[1]).startswith(frozen):
            assert p.grad is None, name
    assert not torch.equal(
        after["visual.layer2.0.conv1.weight"], before["visual.layer2.0.conv1.weight"]
    )
    assert not torch.equal(
        after["visual.layer4.0.bn1.running_mean"], before["visual.layer4.0.bn1.running_mean"]
    )


def test_norm_options(gridclip_cfg):
    cfg = gridclip_cfg(ARCH="RNtiny", WEIGHTS="", NORM="FrozenBN")
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    frozen_bn = build_backbone(cfg)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen_bn.modules())
    assert frozen_bn.visual.layer4[0].conv1.weight.requires_grad  # FrozenBN freezes only the norms

    cfg.MODEL.CLIP.NORM = "SyncBN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    sync = build_backbone(cfg)
    assert isinstance(sync.visual.layer2[0].bn1, nn.SyncBatchNorm)
    assert isinstance(sync.visual.layer1[0].bn1, FrozenBatchNorm2d)
    cfg.MODEL.CLIP.NORM = "BN"
    plain = build_backbone(cfg)
    assert isinstance(plain.visual.layer2[0].bn1, nn.BatchNorm2d)
    assert plain.visual.layer2[0].bn1.weight.requires_grad
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # same weights and statistics: the three norms agree in eval mode
        expected = frozen_bn.eval()(x)["res5"]
        assert _max_diff(sync.eval()(x)["res5"], expected) < TOL
        assert _max_diff(plain.eval()(x)["res5"], expected) < TOL

    cfg.MODEL.CLIP.NORM = "GN"
    with pytest.raises(ValueError, match="MODEL.CLIP.NORM"):
        build_backbone(cfg)


def test_wrong_or_missing_keys_are_named(clip_tiny_checkpoints):
    sd = dict(clip_tiny_checkpoints.state_dict)
    backbone = CLIPResNet("RNtiny")
    missing = dict(sd)
    del missing["visual.layer3.0.bn2.running_var"]
    with pytest.raises(KeyError, match=r"missing keys \['visual.layer3.0.bn2.running_var'\]"):
        backbone.load_clip_visual(missing)
    extra = dict(sd, **{"visual.layer5.0.conv1.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match=r"unexpected keys \['visual.layer5.0.conv1.weight'\]"):
        backbone.load_clip_visual(extra)
    wrong = dict(sd, **{"visual.attnpool.c_proj.bias": torch.zeros(7)})
    with pytest.raises(ValueError, match=r"visual.attnpool.c_proj.bias has shape \(7,\).*\(128,\)"):
        backbone.load_clip_visual(wrong)
    # another architecture's weights: every mismatch is named, nothing is loaded silently
    with pytest.raises((KeyError, ValueError), match="visual.layer"):
        CLIPResNet("RN50", state_dict=sd)
    # a FrozenBN backbone (no num_batches_tracked) still takes OpenAI's keys
    frozen = CLIPResNet("RNtiny", norm="FrozenBN")
    frozen.load_clip_visual(sd)
    assert torch.equal(
        frozen.visual.layer1[0].bn1.running_var, sd["visual.layer1.0.bn1.running_var"]
    )


def test_bad_options_are_named(gridclip_cfg):
    with pytest.raises(ValueError, match="MODEL.CLIP.OUT_FEATURES"):
        CLIPResNet("RNtiny", out_features=["res6"])
    with pytest.raises(ValueError, match="FREEZE_AT"):
        CLIPResNet("RNtiny", freeze_at=6)
    with pytest.raises(KeyError, match="MODEL.CLIP.ARCH"):
        CLIPResNet("RN18")
    cfg = gridclip_cfg(ARCH="RNtiny", WEIGHTS="")
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = [0.0], [1.0]
    with pytest.raises(ValueError, match="3-channel RGB"):
        build_backbone(cfg)
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        CLIPResNet("RNtiny")(torch.zeros(1, 1, 32, 32))


def test_teacher_is_frozen_and_matches_backbone(clip_tiny_checkpoints, gridclip_cfg):
    cfg = gridclip_cfg(ARCH="RNtiny", WEIGHTS=clip_tiny_checkpoints.torchscript_path, NORM="BN")
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    teacher = build_clip_teacher(cfg)
    backbone = build_backbone(cfg).eval()
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in teacher.modules())
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    images = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    with torch.no_grad():
        x = normalize_clip_input(images)
        assert _max_diff(teacher.encode_image(x), backbone.encode_image(x)) < TOL
        reference = clip.load(clip_tiny_checkpoints.torchscript_path, device="cpu", jit=False)[
            0
        ].float()
        assert _max_diff(teacher.encode_image(x), reference.encode_image(x)) < TOL


def test_normalize_clip_input():
    images = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    out = normalize_clip_input(images.contiguous())
    assert out.dtype == torch.float32 and out.shape == (2, 3, 4, 4)
    for c, value in enumerate([0, 128, 255]):
        expected = (value / 255.0 - CLIP_PIXEL_MEAN[c]) / CLIP_PIXEL_STD[c]
        assert abs(out[0, c, 0, 0].item() - expected) < 1e-6
    with pytest.raises(ValueError, match="uint8"):
        normalize_clip_input(images.float())


@pytest.mark.slow
def test_rn50_layout_strides_channels(gridclip_cfg):
    cfg = gridclip_cfg(ARCH="RN50", WEIGHTS="", OUT_FEATURES=ALL_STAGES)
    backbone = build_backbone(cfg).eval()
    assert {k: (s.channels, s.stride) for k, s in backbone.output_shape().items()} == {
        "res2": (256, 4),
        "res3": (512, 8),
        "res4": (1024, 16),
        "res5": (2048, 32),
    }
    assert backbone.embed_dim == 1024
    # the random RN50 state dict has exactly the key layout of OpenAI's RN50 (clip.build_model
    # infers the architecture from it and loads it strictly)
    sd = load_clip_state_dict("", "RN50")
    reference = clip.model.build_model(dict(sd)).float().eval()
    reference.load_state_dict(sd)  # float32 values (build_model rounds through fp16)
    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert _max_diff(backbone.encode_image(x), reference.encode_image(x)) < TOL
        feats = backbone(x)
    assert [tuple(feats[k].shape[1:]) for k in ALL_STAGES] == [
        (256, 56, 56),
        (512, 28, 28),
        (1024, 14, 14),
        (2048, 7, 7),
    ]
    assert isinstance(reference, CLIP)
