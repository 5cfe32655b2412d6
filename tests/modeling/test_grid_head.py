"""GridCLIPHead on its own: shapes, the text-logit formula, temperature/bias parametrisation, frozen
text embeddings, dense CLIP levels, errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec

import gridclip_d2  # noqa: F401
from gridclip_d2 import add_gridclip_config
from gridclip_d2.modeling.grid_head import GridCLIPHead
from gridclip_d2.modeling.text_classifier import TextClassifier

C, D, CH = 5, 24, 32
STRIDES = (8, 16, 32)


def _shapes(channels=CH):
    return [ShapeSpec(channels=channels, stride=s) for s in STRIDES]


def _features(n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, CH, size // s * 8, size // s * 8, generator=g) for s in STRIDES]


def _head(**kwargs):
    torch.manual_seed(0)
    emb = torch.randn(C, D, generator=torch.Generator().manual_seed(1))
    args = dict(input_shape=_shapes(), classifier=TextClassifier(embeddings=emb), num_convs=2)
    args.update(kwargs)
    return GridCLIPHead(**args)


def test_output_shapes_and_unit_embeddings():
    head = _head()
    feats = _features()
    outputs = head(feats)
    logits, deltas, ctr, emb = (
        outputs.logits,
        outputs.box_deltas,
        outputs.centerness,
        outputs.grid_embeddings,
    )
    assert outputs.dense_predictions() == [logits, deltas, ctr]
    for f, lg, dl, ct, em in zip(feats, logits, deltas, ctr, emb):
        n, _, h, w = f.shape
        assert lg.shape == (n, C, h, w)
        assert dl.shape == (n, 4, h, w)
        assert ct.shape == (n, 1, h, w)
        assert em.shape == (n, D, h, w)
        torch.testing.assert_close(em.norm(dim=1), torch.ones(n, h, w))
        assert (dl > 0).all()  # exp'd distances


def test_logits_are_temperature_times_cosine_plus_bias():
    head = _head(temperature=30.0, prior_prob=0.05)
    # Perturb the parameters so the check does not rest on the initial values.
    with torch.no_grad():
        head.log_temperature.fill_(math.log(17.0))
        head.logit_bias.fill_(-1.25)
    logits, _, _, emb = head(_features())
    text = head.classifier.embeddings  # C x D, unit rows
    for lg, em in zip(logits, emb):
        expected = 17.0 * torch.einsum("ndhw,cd->nchw", em, text) - 1.25
        torch.testing.assert_close(lg, expected, rtol=1e-5, atol=1e-4)


def test_initial_bias_and_temperature():
    head = _head(temperature=50.0, prior_prob=0.01)
    assert torch.sigmoid(head.logit_bias).item() == pytest.approx(0.01, rel=1e-5)
    assert head.temperature.item() == pytest.approx(50.0, rel=1e-6)
    assert head.logit_bias.numel() == 1  # one bias for every class: the vocabulary can change


def test_learnable_or_fixed_temperature():
    learned = _head(learn_temperature=True)
    fixed = _head(learn_temperature=False)
    assert any(p is learned.log_temperature for p in learned.parameters())
    assert not any(p is fixed.log_temperature for p in fixed.parameters())
    assert "log_temperature" in dict(fixed.named_buffers())

    logits, deltas, ctr, _ = learned(_features())
    sum(x.sum() for x in logits + deltas + ctr).backward()
    assert learned.log_temperature.grad is not None and learned.log_temperature.grad != 0
    assert learned.logit_bias.grad is not None and learned.logit_bias.grad != 0


def test_text_embeddings_get_no_gradient_and_gradients_reach_towers():
    head = _head()
    text_before = head.classifier.embeddings.clone()
    assert not any(
        True for _ in head.classifier.parameters()
    )  # nothing trainable in the classifier
    assert "classifier.embeddings" not in head.state_dict()  # non-persistent buffer
    logits, deltas, ctr, _ = head(_features())
    loss = sum(x.square().mean() for x in logits) + sum(x.mean() for x in deltas + ctr)
    loss.backward()
    assert not head.classifier.embeddings.requires_grad
    assert torch.equal(head.classifier.embeddings, text_before)
    for name in [
        "cls_subnet.0.weight",
        "bbox_subnet.0.weight",
        "embed.weight",
        "bbox_pred.weight",
        "ctrness.weight",
        "scales",
    ]:
        grad = dict(head.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_group_norm_in_towers():
    head = _head(norm="GN")
    gns = [m for m in head.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(gns) == 4 and all(m.num_groups == 32 and m.num_channels == CH for m in gns)
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in _head(norm="").modules())


def test_per_level_scale_of_box_deltas():
    head = _head()
    feats = _features()
    _, before, _, _ = head(feats)
    with torch.no_grad():
        head.scales[1] = 3.0
    _, after, _, _ = head(feats)
    torch.testing.assert_close(after[0], before[0])
    torch.testing.assert_close(after[1], before[1] ** 3)  # exp(3 x) = exp(x) ** 3


def test_dense_clip_levels_change_only_their_level():
    head = _head(dense_clip_levels=[2])
    feats = _features()
    dense = torch.randn(2, D, 3, 5)
    _, _, _, emb_a = head(feats, dense)
    _, _, _, emb_b = head(feats, torch.randn(2, D, 3, 5))
    torch.testing.assert_close(emb_a[0], emb_b[0])
    torch.testing.assert_close(emb_a[1], emb_b[1])
    assert not torch.allclose(emb_a[2], emb_b[2])
    # Exactly: normalize(projection + normalize(dense resized bilinearly to the level)).
    projection = head.embed(head.cls_subnet(feats[2]))
    resized = F.interpolate(dense, size=emb_a[2].shape[-2:], mode="bilinear", align_corners=False)
    torch.testing.assert_close(
        emb_a[2], F.normalize(projection + F.normalize(resized, dim=1), dim=1)
    )
    with pytest.raises(ValueError, match="dense_embedding"):
        head(feats)


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match="GroupNorm"):
        _head(input_shape=[ShapeSpec(channels=48, stride=s) for s in STRIDES])
    with pytest.raises(ValueError, match="same channels"):
        _head(input_shape=[ShapeSpec(channels=32, stride=8), ShapeSpec(channels=64, stride=16)])
    with pytest.raises(ValueError, match="PRIOR_PROB"):
        _head(prior_prob=1.0)
    with pytest.raises(ValueError, match="TEMPERATURE"):
        _head(temperature=0.0)
    with pytest.raises(ValueError, match="out of range"):
        _head(dense_clip_levels=[3])
    with pytest.raises(ValueError, match="EMBED_KERNEL_SIZE must be 1 or 3, got 2"):
        _head(embed_kernel_size=2)
    head = _head()
    with pytest.raises(ValueError, match="3 levels"):
        head(_features()[:2])


def test_one_by_one_embedding_sees_one_cell():
    """EMBED_KERNEL_SIZE 1 (the lighter head): the grid embedding of a cell depends on that cell's
    tower output only, where the 3x3 conv also reads its neighbours."""
    cfg = _cfg()
    cfg.MODEL.GRIDCLIP.DENSE_CLIP_LEVELS = []
    cfg.MODEL.GRIDCLIP.EMBED_KERNEL_SIZE = 1
    head = GridCLIPHead(cfg, _shapes(), classifier=TextClassifier(embeddings=torch.randn(C, D)))
    assert head.embed.kernel_size == (1, 1) and head.embed.padding == (0, 0)
    tower = torch.randn(1, CH, 6, 6)
    changed = tower.clone()
    changed[..., 2, 2] += 1.0
    moved = (head.embed(changed) - head.embed(tower)).abs().sum(dim=1)[0]  # 6 x 6
    assert moved[2, 2] > 0 and moved.count_nonzero() == 1
    outputs = head(_features())
    assert [tuple(x.shape[1:2]) for x in outputs.grid_embeddings] == [(D,)] * len(STRIDES)


def _cfg():
    cfg = get_cfg()
    add_gridclip_config(cfg)
    cfg.MODEL.GRIDCLIP.IN_FEATURES = ["p3", "p4", "p5"]
    cfg.MODEL.GRIDCLIP.NUM_CONVS = 3
    cfg.MODEL.GRIDCLIP.TEMPERATURE = 20.0
    cfg.MODEL.GRIDCLIP.LEARN_TEMPERATURE = False
    cfg.MODEL.GRIDCLIP.PRIOR_PROB = 0.02
    cfg.MODEL.GRIDCLIP.DENSE_CLIP_LEVELS = ["p5"]
    return cfg


def test_from_config():
    cfg = _cfg()
    classifier = TextClassifier(embeddings=torch.randn(C, D))
    head = GridCLIPHead(cfg, _shapes(), classifier=classifier)
    assert head.classifier is classifier
    assert head.dense_clip_levels == [2]
    assert head.embed_dim == D
    assert sum(isinstance(m, torch.nn.Conv2d) for m in head.cls_subnet) == 3
    assert head.temperature.item() == pytest.approx(20.0)
    assert "log_temperature" not in dict(head.named_parameters())
    assert torch.sigmoid(head.logit_bias).item() == pytest.approx(0.02, rel=1e-5)

    cfg.MODEL.GRIDCLIP.DENSE_CLIP_LEVELS = ["p6"]
    with pytest.raises(ValueError, match="DENSE_CLIP_LEVELS.*p6"):
        GridCLIPHead(cfg, _shapes(), classifier=classifier)


def test_projection_initialised_from_clip_attention_pool():
    """EMBED_INIT "clip": a 1x1 conv to res5's width, then c_proj o v_proj as one 1x1 conv; on
    features that the first conv passes through unchanged, the grid embedding is CLIP's dense
    one."""
    width = CH  # the first conv maps CH -> width
    g = torch.Generator().manual_seed(3)
    v_w, v_b = torch.randn(width, width, generator=g), torch.randn(width, generator=g)
    c_w, c_b = torch.randn(D, width, generator=g), torch.randn(D, generator=g)
    head = _head(clip_projection=(v_w, v_b, c_w, c_b))
    first, second = head.embed[0], head.embed[1]
    torch.testing.assert_close(second.weight[:, :, 0, 0], c_w @ v_w)
    torch.testing.assert_close(second.bias, c_w @ v_b + c_b)
    with torch.no_grad():
        first.weight.copy_(torch.eye(width)[:, :, None, None])
        first.bias.zero_()
    x = torch.randn(2, width, 3, 3, generator=g)
    expected = F.linear(F.linear(x.permute(0, 2, 3, 1), v_w, v_b), c_w, c_b).permute(0, 3, 1, 2)
    torch.testing.assert_close(head.embed(x), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="do not map res5"):
        _head(clip_projection=(v_w, v_b, torch.randn(D + 1, width), c_b))


def test_temperature_is_clamped_at_100():
    head = _head()
    with torch.no_grad():
        head.log_temperature.fill_(math.log(1e4))
    assert head.temperature.item() == pytest.approx(100.0)
