"""GridCLIP on small models: label assignment, the classification-loss masks (novel classes,
federated loss), decoding, vocabulary swap, dense CLIP levels, configuration errors. The shipped
configs end to end are in test_gridclip_shipped_configs.py."""

import functools
import os

import numpy as np
import pytest
import torch

from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.layers import ShapeSpec, batched_nms
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.meta_arch.fcos import FCOS
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage

import gridclip_d2  # noqa: F401
from gridclip_d2 import add_gridclip_config
from gridclip_d2.modeling.clip_text import text_embeddings_from_cfg
from gridclip_d2.modeling.dense_decoding import candidate_rows
from gridclip_d2.modeling.fed_loss import fed_loss_class_weights, sample_fed_loss_classes
from gridclip_d2.modeling.gridclip import GridCLIP

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")


# ---------------------------------------------------------------------------------- small models
def _synthetic_cfg():
    cfg = get_cfg()
    add_gridclip_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIGS, "GridCLIP_synthetic.yaml"))
    cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.ENABLED = False
    cfg.MODEL.GRIDCLIP.IN_FEATURES = ["p3", "p4", "p5"]
    return cfg


def _small_model(cfg=None, **overrides):
    torch.manual_seed(0)
    args = GridCLIP.from_config(cfg or _synthetic_cfg())
    args.update(overrides)
    return GridCLIP(**args)


def _gt(boxes, classes, size=(96, 96)):
    inst = Instances(size)
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    return inst


def _loss_inputs(model, gts, size=96, seed=0):
    """Random dense predictions (requiring grad) for ``len(gts)`` images of size x size."""
    g = torch.Generator().manual_seed(seed)
    feats = [torch.zeros(len(gts), 1, size // s, size // s) for s in model.strides]
    anchors = model.anchor_generator(feats)
    r = sum(len(a) for a in anchors)
    logits = torch.randn(len(gts), r, model.num_classes, generator=g).requires_grad_()
    deltas = [torch.rand(len(gts), len(a), 4, generator=g) * 3 for a in anchors]
    ctr = [torch.randn(len(gts), len(a), 1, generator=g) for a in anchors]
    labels, boxes = model.label_anchors(anchors, gts)
    split = list(logits.split([len(a) for a in anchors], dim=1))
    return anchors, logits, split, labels, deltas, boxes, ctr


def test_label_anchors_handles_empty_images_like_fcos_on_the_rest():
    model = _small_model()
    gts = [_gt([[8, 8, 60, 70], [40, 10, 90, 50]], [2, 5]), _gt([], []), _gt([[0, 0, 96, 96]], [1])]
    feats = [torch.zeros(3, 1, 96 // s, 96 // s) for s in model.strides]
    anchors = model.anchor_generator(feats)
    labels, boxes = model.label_anchors(anchors, gts)
    ref_labels, ref_boxes = FCOS.label_anchors(model, anchors, [gts[0], gts[2]])
    assert torch.equal(labels[0], ref_labels[0]) and torch.equal(labels[2], ref_labels[1])
    assert torch.equal(boxes[0].tensor, ref_boxes[0].tensor)
    assert (labels[1] == model.num_classes).all() and boxes[1].tensor.shape == (len(labels[1]), 4)
    assert (labels[0] == 2).any() and (labels[0] == 5).any()


def test_perfect_box_predictions_give_zero_box_loss():
    model = _small_model()
    gts = [_gt([[8, 8, 60, 70], [40, 10, 90, 50]], [2, 5])]
    anchors, _, split, labels, _, boxes, ctr = _loss_inputs(model, gts)
    all_anchors = Boxes.cat(anchors).tensor
    exact = model.box2box_transform.get_deltas(all_anchors, boxes[0].tensor)[None]  # 1 x R x 4
    deltas = list(exact.split([len(a) for a in anchors], dim=1))
    with EventStorage():
        losses = model.losses(anchors, split, labels, deltas, boxes, ctr)
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_quality"}
    assert losses["loss_box_reg"].item() == pytest.approx(0.0, abs=1e-5)
    assert losses["loss_quality"] > 0 and losses["loss_cls"] > 0


def test_only_empty_images_give_finite_losses():
    model = _small_model()
    anchors, logits, split, labels, deltas, boxes, ctr = _loss_inputs(
        model, [_gt([], []), _gt([], [])]
    )
    with EventStorage():
        losses = model.losses(anchors, split, labels, deltas, boxes, ctr)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box_reg"] == 0 and losses["loss_quality"] == 0 and losses["loss_cls"] > 0
    losses["loss_cls"].backward()
    assert logits.grad.abs().sum() > 0


def _column_grads(model, gts):
    anchors, logits, split, labels, deltas, boxes, ctr = _loss_inputs(model, gts)
    with EventStorage():
        model.losses(anchors, split, labels, deltas, boxes, ctr)["loss_cls"].backward()
    return logits.grad.abs().sum(dim=(0, 1))  # C


def test_novel_classes_left_out_of_the_classification_loss():
    gts = [_gt([[8, 8, 60, 70]], [2])]
    grads = _column_grads(_small_model(novel_class_ids=[6, 7]), gts)
    assert (grads[[6, 7]] == 0).all() and (grads[:6] > 0).all()
    grads = _column_grads(_small_model(novel_class_ids=[]), gts)
    assert (grads > 0).all()


def test_fed_loss_restricts_columns_to_gt_plus_sampled_classes():
    counts = [100, 50, 20, 10, 5, 1, 0, 30] + [0] * 22  # 30 synthetic classes
    model = _small_model(
        use_fed_loss=True, fed_loss_num_classes=4, image_count_per_class=counts, novel_class_ids=[7]
    )
    for seed in range(5):
        torch.manual_seed(seed)
        # gt classes 2 and 7 (novel): 2 + two classes sampled among those with images, 7 masked out.
        grads = _column_grads(model, [_gt([[8, 8, 60, 70], [40, 10, 90, 50]], [2, 7])])
        used = set(grads.nonzero().squeeze(1).tolist())
        assert len(used) == 3 and 2 in used, used
        assert used - {2} <= {0, 1, 3, 4, 5}, used  # never 6 (no image) nor 7 (novel)
    # Built without the counts (evaluation, the demo), the model refuses to train with the loss.
    model = _small_model(use_fed_loss=True, image_count_per_class=None)
    with pytest.raises(ValueError, match="image_count_per_class"):
        _column_grads(model, [_gt([[8, 8, 60, 70]], [2])])


def test_fed_loss_sampling():
    weights = fed_loss_class_weights(
        [100, 25, 0, 4, 1], 0.5, allowed=torch.tensor([1, 1, 1, 1, 0]).bool()
    )
    torch.testing.assert_close(weights, torch.tensor([10.0, 5.0, 0.0, 2.0, 0.0]))
    g = torch.Generator().manual_seed(0)
    picks = torch.zeros(5)
    for _ in range(2000):
        cls = sample_fed_loss_classes(torch.tensor([3]), 2, weights, generator=g)
        assert cls.tolist() == sorted(set(cls.tolist())) and 3 in cls.tolist() and len(cls) == 2
        picks[cls] += 1
    assert picks[2] == 0 and picks[4] == 0  # zero weight: never drawn
    assert picks[0] / picks[1] == pytest.approx(2.0, rel=0.15)  # proportional to the weights
    # More gt classes than num_sample: all kept, none added; too few drawable classes: all of them.
    assert sample_fed_loss_classes(torch.tensor([0, 1, 3]), 2, weights).tolist() == [0, 1, 3]
    assert sample_fed_loss_classes(torch.tensor([], dtype=torch.long), 50, weights).tolist() == [
        0,
        1,
        3,
    ]
    with pytest.raises(ValueError, match="gt class ids"):
        sample_fed_loss_classes(torch.tensor([5]), 2, weights)


def test_fast_decode_equals_detectron2_decode():
    model = _small_model()
    g = torch.Generator().manual_seed(0)
    for num_classes, thresh, k in [(1203, 1e-4, 1000), (8, 0.3, 50), (30, 0.999, 100)]:
        anchors = Boxes(
            torch.rand(400, 2, generator=g).repeat(1, 2) * 100 + torch.tensor([-8, -8, 8, 8.0])
        )
        # distinct scores (no ties, whose order sorting leaves open)
        scores = (
            torch.randperm(400 * num_classes, generator=g).float() / (400 * num_classes)
        ).view(400, -1)
        deltas = torch.rand(400, 4, generator=g) * 4
        ours = model._decode_per_level_predictions(anchors, scores, deltas, thresh, k, (90, 110))
        ref = DenseDetector._decode_per_level_predictions(
            model, anchors, scores, deltas, thresh, k, (90, 110)
        )
        ref.pred_boxes.clip((90, 110))
        assert len(ours) == len(ref) > 0
        assert torch.equal(ours.scores, ref.scores) and torch.equal(
            ours.pred_classes, ref.pred_classes
        )
        assert torch.equal(ours.pred_boxes.tensor, ref.pred_boxes.tensor)


def test_inference_single_image_equals_reference_pipeline():
    model = _small_model()
    model.test_topk_candidates, model.max_detections_per_image = 200, 50
    g = torch.Generator().manual_seed(1)
    feats = [torch.zeros(1, 1, 128 // s, 128 // s) for s in model.strides]
    anchors = model.anchor_generator(feats)
    total = sum(len(a) for a in anchors) * 8
    scores = list(
        (torch.randperm(total, generator=g).float() / total)
        .view(-1, 8)
        .split([len(a) for a in anchors])
    )
    deltas = [torch.rand(len(a), 4, generator=g) * 3 for a in anchors]
    ours = model.inference_single_image(anchors, scores, deltas, (120, 128))
    per_level = [
        DenseDetector._decode_per_level_predictions(
            model, a, s, d, model.test_score_thresh, 200, (120, 128)
        )
        for a, s, d in zip(anchors, scores, deltas)
    ]
    ref = Instances.cat(per_level)
    ref.pred_boxes.clip((120, 128))
    ref = ref[
        batched_nms(ref.pred_boxes.tensor, ref.scores, ref.pred_classes, model.test_nms_thresh)[:50]
    ]
    assert len(ours) == 50
    assert torch.equal(ours.scores, ref.scores) and torch.equal(ours.pred_classes, ref.pred_classes)
    assert torch.equal(ours.pred_boxes.tensor, ref.pred_boxes.tensor)


@pytest.mark.parametrize(
    "thresh, k",
    [
        (1e-4, 40),  # P3 has 256 locations: 6x k, most left out by the k-th highest bound
        (0.7, 1000),  # a display threshold: the locations below it are left out
        (1e-4, 1000),  # every location kept: the plain path
    ],
)
def test_forward_inference_scores_only_candidate_locations(thresh, k):
    """Scoring only the locations that can hold a top-k score above the threshold gives FCOS's
    detections (every score of every level)."""
    model = _small_model()
    model.test_score_thresh, model.test_topk_candidates = thresh, k
    model.max_detections_per_image = 10000  # every candidate that survives NMS is compared
    g = torch.Generator().manual_seed(2)
    sizes = [(120, 128), (128, 100)]
    images = ImageList(torch.zeros(2, 3, 128, 128), sizes)
    feats = [torch.zeros(2, 1, 128 // s, 128 // s) for s in model.strides]
    c = model.num_classes
    total = sum(f.shape[-1] * f.shape[-2] for f in feats) * 2 * c
    values = (torch.randperm(total, generator=g).float() / total * 12 - 6).split(
        [f.shape[-1] * f.shape[-2] * 2 * c for f in feats]
    )  # distinct logits
    logits = [v.view(2, c, *f.shape[-2:]) for v, f in zip(values, feats)]
    deltas = [torch.rand(2, 4, *f.shape[-2:], generator=g) * 3 for f in feats]
    ctr = [torch.randn(2, 1, *f.shape[-2:], generator=g) for f in feats]

    def run(forward):
        preds = [[t.clone() for t in logits], [t.clone() for t in deltas], [t.clone() for t in ctr]]
        return forward(model, images, feats, preds)

    p3 = logits[0][0].flatten(1).t()  # P3 of image 0: R x C
    rows = candidate_rows(p3, ctr[0][0].flatten(1).t(), thresh, k)
    assert (rows is None) == (k == 1000 and thresh < 0.01)
    ours, ref = run(GridCLIP.forward_inference), run(FCOS.forward_inference)
    for a, b in zip(ours, ref):
        assert len(a) == len(b) > 0
        assert torch.equal(a.pred_classes, b.pred_classes)
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert (a.scores - b.scores).abs().max() <= 1e-6  # sqrt(a * b) or sqrt_ of a mul_


def _predict(model, image):
    model.eval()
    with torch.no_grad():
        images = model.preprocess_image([{"image": image}])
        features = model.backbone(images.tensor)
        logits = model.head([features[f] for f in model.head_in_features]).logits
        return logits, model([{"image": image}])[0]["instances"]


def test_set_vocabulary_swaps_classes():
    cfg = _synthetic_cfg()
    model = _small_model(cfg)
    image = torch.randint(
        0, 256, (3, 96, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    old = model.head.classifier.embeddings.clone()
    logits30, _ = _predict(model, image)
    assert logits30[0].shape[1] == 30

    names = ["zebra", "traffic cone", "kite"]
    model.set_vocabulary(names)
    assert model.num_classes == 3 and model.vocabulary == names
    torch.testing.assert_close(
        model.head.classifier.embeddings, text_embeddings_from_cfg(cfg, names)
    )
    logits3, inst = _predict(model, image)
    assert logits3[0].shape[1] == 3 and len(inst) > 0
    assert set(inst.pred_classes.tolist()) <= {0, 1, 2}
    assert {names[c] for c in inst.pred_classes.tolist()} <= set(names)

    # Rows taken from the old vocabulary reproduce the old logits of those classes.
    rows = [6, 1]
    model.set_vocabulary(embeddings=old[rows].numpy())
    logits2, inst = _predict(model, image)
    for a, b in zip(logits2, logits30):
        torch.testing.assert_close(a, b[:, rows])
    assert model.num_classes == 2 and set(inst.pred_classes.tolist()) <= {0, 1}

    model.train()
    with pytest.raises(RuntimeError, match="set_vocabulary"):
        model([{"image": image, "instances": _gt([], [], (96, 128))}])


def test_set_vocabulary_from_npy_and_bad_vocabularies(tmp_path):
    model = _small_model()
    emb = np.random.RandomState(0).randn(4, 128).astype(np.float32)
    np.save(tmp_path / "v.npy", emb)
    model.set_vocabulary(embeddings=str(tmp_path / "v.npy"))
    assert model.num_classes == 4
    torch.testing.assert_close(
        model.head.classifier.embeddings,
        torch.nn.functional.normalize(torch.from_numpy(emb), dim=1),
    )
    with pytest.raises(ValueError, match="empty"):
        model.set_vocabulary([])
    with pytest.raises(ValueError, match="non-empty"):
        model.set_vocabulary(embeddings=np.zeros((0, 128), np.float32))
    with pytest.raises(ValueError, match="dim 64"):
        model.set_vocabulary(embeddings=np.ones((3, 64), np.float32))
    with pytest.raises(ValueError, match="`names`, `embeddings`, or both"):
        model.set_vocabulary()
    with pytest.raises(TypeError, match="list of names"):
        model.set_vocabulary("zebra")
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        model.set_vocabulary(embeddings=str(tmp_path / "missing.npy"))
    assert model.num_classes == 4  # failed swaps change nothing


def test_set_vocabulary_normalises_and_checks_the_dimension_once():
    """The classifier normalises the new rows and checks their dimension (one place for both)."""
    model = _small_model()
    rows = torch.randn(3, 128, generator=torch.Generator().manual_seed(1)) * 5
    model.set_vocabulary(["a", "b", "c"], embeddings=rows)
    torch.testing.assert_close(
        model.head.classifier.embeddings, torch.nn.functional.normalize(rows, dim=1)
    )
    assert model.vocabulary == ["a", "b", "c"] and model.num_classes == 3
    with pytest.raises(ValueError, match="dimension 64, the classifier 128.*not dim 64"):
        model.set_vocabulary(["a"], embeddings=torch.ones(1, 64))
    assert model.vocabulary == ["a", "b", "c"] and model.num_classes == 3


def test_dense_clip_levels_through_the_model():
    cfg = _synthetic_cfg()
    cfg.MODEL.GRIDCLIP.DENSE_CLIP_LEVELS = ["p5"]
    model = _small_model(cfg)
    assert model.head.dense_clip_levels == [2]
    assert model.backbone.output_shape()["dense_clip"] == ShapeSpec(channels=128, stride=32)
    image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8)
    model.train()
    with EventStorage():
        losses = model([{"image": image, "instances": _gt([[10, 10, 60, 80]], [3], (96, 128))}])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    layer4 = model.backbone.bottom_up.visual.layer4
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in layer4.parameters())


def test_configuration_errors():
    cfg = _synthetic_cfg()
    cfg.INPUT.FORMAT = "BGR"
    with pytest.raises(ValueError, match="INPUT.FORMAT"):
        build_model(cfg)
    cfg = _synthetic_cfg()
    cfg.MODEL.GRIDCLIP.IN_FEATURES = ["p3", "p9"]
    with pytest.raises(ValueError, match=r"IN_FEATURES.*p9"):
        build_model(cfg)
    cfg = _synthetic_cfg()
    cfg.MODEL.GRIDCLIP.VOCABULARY = ""  # the vocabulary then comes from the training set
    cfg.DATASETS.TRAIN = ("no_such_dataset_xyz",)
    with pytest.raises(ValueError, match="no_such_dataset_xyz"):
        build_model(cfg)
    cfg.DATASETS.TRAIN = ()
    with pytest.raises(ValueError, match="no vocabulary: set MODEL.GRIDCLIP.CLASS_NAMES"):
        build_model(cfg)
    cfg = _synthetic_cfg()
    cfg.MODEL.GRIDCLIP.VOCABULARY = ""
    cfg.MODEL.GRIDCLIP.USE_FED_LOSS = True
    MetadataCatalog.get("gridclip_test_no_counts").set(thing_classes=["a", "b"])
    cfg.DATASETS.TRAIN = ("gridclip_test_no_counts",)
    model = build_model(cfg)
    assert model.vocabulary == ["a", "b"]
    with pytest.raises(ValueError, match="image_count_per_class"):
        model.loss_columns.columns(torch.tensor([0]))


# --------------------------------------------------------------------------- proposal regions
def _proposal_model():
    cfg = _synthetic_cfg()
    cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.ENABLED = True
    cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.REGIONS = "proposals"
    cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.NUM_PROPOSALS = 5
    return _small_model(cfg)


def test_proposal_regions_never_read_ground_truth():
    """The alignment's proposals are the model's own boxes: inputs that differ only in their
    ground truth (other boxes, other classes, none at all) get the same proposals, at most
    NUM_PROPOSALS per image, inside the image."""
    model = _proposal_model().train()
    assert model.image_alignment.regions == "proposals" and model.image_alignment.teacher
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8, generator=g) for _ in range(2)]
    seen, losses = [], []
    original = model.image_alignment.forward

    def record(grid_embeddings, strides, batched_inputs, proposals=None, weights=None):
        seen.append([p.clone() for p in proposals])
        return original(grid_embeddings, strides, batched_inputs, proposals, weights)

    model.image_alignment.forward = record
    gts = [
        [_gt([[10, 10, 50, 40]], [0], (96, 128)), _gt([[0, 0, 90, 90]], [3], (96, 128))],
        [_gt([[60, 20, 120, 90], [5, 5, 20, 20]], [7, 2], (96, 128)), _gt([], [], (96, 128))],
    ]
    for gt in gts:
        inputs = [
            {"image": im, "instances": i, "image_id": k}
            for k, (im, i) in enumerate(zip(images, gt))
        ]
        with EventStorage():
            losses.append(model(inputs))
    assert len(seen) == 2
    for a, b in zip(*seen):
        assert 0 < len(a) <= 5 and torch.equal(a, b)
        assert (a[:, 0] >= 0).all() and (a[:, 2] <= 128).all() and (a[:, 3] <= 96).all()
    assert losses[0]["loss_image_align"] > 0
    # the ground truth changes the detection losses, not the alignment's regions or its loss
    assert losses[0]["loss_image_align"] == losses[1]["loss_image_align"]
    assert losses[0]["loss_box_reg"] != losses[1]["loss_box_reg"]


def test_class_agnostic_proposals_rank_decode_and_deduplicate():
    from detectron2.modeling.box_regression import Box2BoxTransformLinear

    from gridclip_d2.modeling.proposals import class_agnostic_proposals

    # one level of 4 points; every point predicts a 20 x 20 box around itself
    anchors = [
        Boxes(
            torch.tensor([[10.0, 10, 10, 10], [12, 10, 12, 10], [50, 50, 50, 50], [95, 95, 95, 95]])
        )
    ]
    deltas = [torch.full((1, 4, 4), 10.0)]
    logits = [torch.tensor([[[5.0, -9], [-9, 4.0], [-9, 3.0], [2.0, -9]]])]  # best class: any
    ctr = [torch.zeros(1, 4, 1)]
    transform = Box2BoxTransformLinear(normalize_by_size=False)
    propose = functools.partial(
        class_agnostic_proposals, anchors, logits, deltas, ctr, [(100, 100)], transform
    )
    # class 0 is a base class, class 1 novel
    out, known = propose(num_proposals=2, known_classes=torch.tensor([True, False]))
    # point 1 overlaps point 0 (IoU 0.82, lower score): dropped; point 3's box is clipped
    assert out[0].tolist() == [[0.0, 0.0, 20.0, 20.0], [40.0, 40.0, 60.0, 60.0]]
    # the best base-class probability at each kept location (point 0: class 0; point 2: class 1)
    torch.testing.assert_close(known[0], torch.tensor([5.0, -9.0]).sigmoid())
    out, known = propose(num_proposals=5)
    assert out[0][-1].tolist() == [85.0, 85.0, 100.0, 100.0] and known is None
