"""Inference on conv weights prepared once (BatchNorm folded in, channels-last on the CPU): the
modules' numbers within float32 rounding, and never stale after the weights change."""

import os

import pytest
import torch
from torch import nn

from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling import build_backbone
from detectron2.modeling.meta_arch.fcos import FCOS
from detectron2.structures import pairwise_iou

from gridclip_d2.modeling import inference_weights as iw
from gridclip_d2.modeling.gridclip import GridCLIP
from gridclip_d2.predictor import GridCLIPPredictor

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "GridCLIP_synthetic.yaml")
IMAGE = os.path.join(REPO, "demo", "examples", "200016.jpg")

STAGES = ["res2", "res3", "res4", "res5"]
# Folding a BatchNorm's scale into the conv weights and adding its shift as the conv's bias rounds
# differently from conv-then-normalise: float32's 2^-24 relative rounding, a few times per conv,
# over RNtiny's ~20 convs; 1e-5 of the output's scale leaves ~100x margin. A stale weight moves
# the outputs by a large fraction of that scale.
REL = 1e-5


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _modules_path(module, *args):
    """``module(*args)`` on the modules themselves: with gradients on, nothing is prepared."""
    with torch.enable_grad():
        out = module(*args)
    if isinstance(out, dict):
        return {k: v.detach() for k, v in out.items()}
    return out.detach() if isinstance(out, torch.Tensor) else out


@pytest.fixture
def backbone(clip_tiny_checkpoints, gridclip_cfg):
    cfg = gridclip_cfg(
        ARCH="RNtiny", WEIGHTS=clip_tiny_checkpoints.state_dict_path, OUT_FEATURES=STAGES
    )
    return build_backbone(cfg).eval()


def _image(seed=0):
    return torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(seed))


def _assert_close(got: dict, ref: dict):
    for name in STAGES:
        assert _rel_diff(got[name], ref[name]) < REL, name


def test_prepared_backbone_equals_its_modules(backbone):
    x = _image()
    with torch.no_grad():
        prepared = backbone(x)
    _assert_close(prepared, _modules_path(backbone, x))
    # the frozen BatchNorms really were folded in, and the weights are channels-last
    conv = backbone.visual.layer1[0].conv2
    weight, bias = iw.inference_conv(conv, backbone.visual.layer1[0].bn2)
    assert bias is not None and weight.is_contiguous(memory_format=torch.channels_last)
    assert not torch.equal(weight, conv.weight)


def test_not_used_for_training_or_with_gradients(backbone):
    x = _image()
    backbone.train()
    with torch.no_grad():
        assert not iw.use_prepared_weights(backbone)
    backbone.eval()
    assert not iw.use_prepared_weights(backbone)  # gradients on: the modules run, grads flow
    out = backbone(x.requires_grad_())
    out["res5"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_weight_changes_are_seen(backbone, clip_tiny_checkpoints):
    x = _image(1)
    with torch.no_grad():
        before = backbone(x)
    block = backbone.visual.layer2[0]

    # an in-place write to a conv weight (optimizer steps, copy_, torch.nn.init)
    with torch.no_grad():
        block.conv2.weight.mul_(-1.5)
        after = backbone(x)
    assert _rel_diff(after["res3"], before["res3"]) > 0.01
    _assert_close(after, _modules_path(backbone, x))

    # new BatchNorm statistics (a checkpoint loaded into the eval-mode model)
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    state["visual.layer3.0.bn1.running_var"] *= 4.0
    state["visual.layer3.0.bn1.bias"] += 0.5
    backbone.load_state_dict(state)
    with torch.no_grad():
        reloaded = backbone(x)
    assert _rel_diff(reloaded["res4"], after["res4"]) > 0.01
    _assert_close(reloaded, _modules_path(backbone, x))

    # storage swapped (.to(), .half(), .data =): float64 outputs, from float64 weights
    backbone.double()
    with torch.no_grad():
        doubled = backbone(x.double())
    assert doubled["res5"].dtype == torch.float64
    _assert_close(doubled, _modules_path(backbone, x.double()))

    # .data writes bypass the version counter: clear_prepared_weights is the documented way
    backbone.float()
    with torch.no_grad():
        backbone(x)
        block.conv1.weight.data.mul_(3.0)
    iw.clear_prepared_weights(backbone)
    with torch.no_grad():
        cleared = backbone(x)
    _assert_close(cleared, _modules_path(backbone, x))


def test_batchnorm_is_folded_only_in_eval_mode():
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    bn = nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    x = torch.randn(2, 4, 9, 7)
    bn.eval()
    with torch.no_grad():
        got = iw.conv_norm_forward(x, conv, bn, torch.relu_)
        ref = torch.relu(bn(conv(x)))
    assert _rel_diff(got, ref) < REL
    bn.train()
    assert not iw.foldable_norm(bn)
    with pytest.raises(ValueError, match="BatchNorm2d in training mode"):
        iw.inference_conv(conv, bn)
    frozen = FrozenBatchNorm2d.convert_frozen_batchnorm(bn.eval())
    assert iw.foldable_norm(frozen)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_detectron2_conv_with_norm_and_activation(padding_mode):
    conv = Conv2d(
        5,
        8,
        kernel_size=3,
        padding=1,
        bias=False,
        padding_mode=padding_mode,
        norm=FrozenBatchNorm2d(8),
        activation=nn.ReLU(),
    ).eval()
    with torch.no_grad():
        conv.norm.running_mean.normal_()
        conv.norm.weight.uniform_(0.5, 2.0)
        x = torch.randn(1, 5, 11, 13).contiguous(memory_format=torch.channels_last)
        got = iw.conv_forward(conv, x)
    assert _rel_diff(got, _modules_path(conv, x)) < REL


def test_detections_equal_detectron2s_path(synthetic_weights, monkeypatch):
    """The embedded default's detections with prepared weights and NMS over the best-scoring
    candidates equal those of the modules and FCOS's NMS over every candidate."""
    predictor = GridCLIPPredictor.from_config_file(CONFIG, synthetic_weights, score_thresh=1e-4)
    model = predictor.model
    model.max_detections_per_image = 50  # fewer than survive NMS: the early stop is exercised
    image = predictor.as_model_array(IMAGE)
    inputs = [{"image": torch.from_numpy(image.transpose(2, 0, 1).copy())}]
    with torch.no_grad():
        got = model(inputs)[0]["instances"]
    monkeypatch.setattr(GridCLIP, "inference_single_image", FCOS.inference_single_image)
    ref = _modules_path(lambda: model(inputs)[0]["instances"])
    assert len(got) == len(ref) == 50
    # float32 rounding differs between the two paths (~1e-7 of a score), so two detections whose
    # scores are that close may swap places: each of the first 45 is matched, not indexed
    top = ref[:45]
    same = (top.pred_classes[:, None] == got.pred_classes[None, :]) & (
        pairwise_iou(top.pred_boxes, got.pred_boxes) > 0.999
    )
    close = (top.scores[:, None] - got.scores[None, :]).abs() < 1e-5
    assert (same & close).any(dim=1).all()


def test_weights_made_under_inference_mode_are_never_kept(clip_tiny_checkpoints, gridclip_cfg):
    """Tensors made under torch.inference_mode() count no writes, so nothing prepared from them is
    kept: a write is seen at the next call."""
    cfg = gridclip_cfg(
        ARCH="RNtiny", WEIGHTS=clip_tiny_checkpoints.state_dict_path, OUT_FEATURES=STAGES
    )
    with torch.inference_mode():
        backbone = build_backbone(cfg).eval()
        x = _image(2)
        before = backbone(x)
        backbone.visual.layer1[0].conv1.weight.mul_(2.0)
        after = backbone(x)
        v = backbone.visual  # res2 on the modules themselves
        stem = v.relu1(v.bn1(v.conv1(x)))
        stem = v.avgpool(v.relu3(v.bn3(v.conv3(v.relu2(v.bn2(v.conv2(stem)))))))
        reference = v.layer1(stem)
    assert _rel_diff(after["res2"], before["res2"]) > 0.01
    assert _rel_diff(after["res2"], reference) < REL


def test_back_to_training_the_prepared_weights_are_let_go(synthetic_weights):
    predictor = GridCLIPPredictor.from_config_file(CONFIG, synthetic_weights)
    model = predictor.model
    predictor(IMAGE)

    def prepared():
        return sum(m in iw._CACHE for m in model.modules())

    assert prepared() > 0
    model.train()
    assert prepared() == 0
    model.eval()
    predictor(IMAGE)
    assert prepared() > 0
