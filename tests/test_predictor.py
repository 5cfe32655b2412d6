"""gridclip_d2.GridCLIPPredictor, the Python API: a real photograph, a custom vocabulary, every
input kind, batches, vocabulary changes without reloading, and what is shown by default."""

import importlib.util
import os

import numpy as np
import pytest
import torch
from matplotlib import cbook
from PIL import Image

from detectron2.structures import pairwise_iou

from gridclip_d2 import GridCLIPPredictor
from gridclip_d2.modeling import clip_text
from gridclip_d2.predictor import ClassNames

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "GridCLIP_synthetic.yaml")
PHOTO = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)  # 512 x 600 RGB photograph
VOCABULARY = ["person", "necktie", "flag"]


@pytest.fixture(scope="module")
def predictor(synthetic_weights):
    return GridCLIPPredictor.from_config_file(
        CONFIG, weights=synthetic_weights, vocabulary=VOCABULARY, score_thresh=0.0, batch_size=2
    )


def _same(a, b):
    assert len(a) == len(b)
    assert torch.allclose(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=1e-3)
    assert torch.allclose(a.scores, b.scores, atol=1e-5)
    assert torch.equal(a.pred_classes, b.pred_classes)


def test_photograph_with_a_custom_vocabulary(predictor):
    instances = predictor(PHOTO)
    assert predictor.vocabulary == VOCABULARY
    assert instances.image_size == (600, 512)  # the photograph's own size, not the test resize
    assert len(instances) > 0
    names = list(instances.pred_class_names)
    assert set(names) <= set(VOCABULARY)
    assert names == [VOCABULARY[int(c)] for c in instances.pred_classes]
    boxes = instances.pred_boxes.tensor
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 512).all() and (boxes[:, 3] <= 600).all()
    assert torch.equal(instances.scores, instances.scores.sort(descending=True).values)
    # Names follow the detections through Detectron2's indexing.
    top = instances[instances.scores >= instances.scores[min(2, len(instances) - 1)]]
    assert list(top.pred_class_names) == names[: len(top)]


def test_every_input_kind_gives_the_same_detections(predictor):
    rgb = np.asarray(Image.open(PHOTO).convert("RGB"))
    from_path = predictor(PHOTO)
    _same(from_path, predictor(rgb, format="RGB"))
    _same(from_path, predictor(np.ascontiguousarray(rgb[:, :, ::-1]), format="BGR"))
    _same(from_path, predictor(Image.open(PHOTO)))
    flipped = np.ascontiguousarray(rgb[:, ::-1])
    batch = predictor.predict([PHOTO, flipped, rgb[:300]], format="RGB")  # batches of 2
    assert len(batch) == 3
    _same(batch[0], from_path)
    _same(batch[1], predictor(flipped, format="RGB"))
    assert batch[2].image_size == (300, 512)


def test_shown_detections_are_one_box_per_object(predictor):
    shown = predictor(PHOTO)
    iou = pairwise_iou(shown.pred_boxes, shown.pred_boxes).fill_diagonal_(0)
    assert float(iou.max()) <= predictor.nms_thresh + 1e-6  # no overlapping copies, of any class
    protocol = predictor(PHOTO, display=False)  # the model's own (LVIS-protocol) output
    assert len(protocol) > len(shown)
    cross_class = pairwise_iou(protocol.pred_boxes, protocol.pred_boxes).fill_diagonal_(0)
    assert float(cross_class.max()) > predictor.nms_thresh
    strict = GridCLIPPredictor(predictor.cfg, VOCABULARY, score_thresh=float(shown.scores[2]))
    assert len(strict(PHOTO)) == 3 and strict(PHOTO).scores.min() >= shown.scores[2]


def test_vocabulary_changes_without_reloading(predictor, monkeypatch):
    embedded = []
    encode = clip_text.encode_names
    monkeypatch.setattr(
        clip_text,
        "encode_names",
        lambda enc, names, *a, **k: embedded.append(list(names)) or encode(enc, names, *a, **k),
    )
    model = predictor.model
    predictor.set_vocabulary("zebra, kite")
    assert predictor.vocabulary == ["zebra", "kite"] and embedded == [["zebra", "kite"]]
    assert set(predictor(PHOTO).pred_class_names) <= {"zebra", "kite"}
    predictor.set_vocabulary(VOCABULARY)  # used before: from the cache, nothing embedded
    predictor.set_vocabulary(["zebra", "kite"])
    assert embedded == [["zebra", "kite"]] and predictor.model is model
    assert model.head.classifier.num_classes == 2
    predictor.set_vocabulary(VOCABULARY)


def test_vocabulary_from_a_text_embedding_file(predictor, tmp_path):
    spec = importlib.util.spec_from_file_location(
        "dump", os.path.join(REPO, "tools", "dump_text_embeddings.py")
    )
    dump = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dump)
    npy = str(tmp_path / "animals.npy")
    clip_weights = predictor.cfg.MODEL.CLIP.WEIGHTS
    assert (
        dump.main(
            [
                "--clip",
                clip_weights,
                "--arch",
                predictor.cfg.MODEL.CLIP.ARCH,
                "--vocabulary",
                "custom",
                "--custom-vocabulary",
                "zebra,kite,blue square",
                "--out",
                npy,
            ]
        )
        == 0
    )
    predictor.set_vocabulary(npy)
    assert predictor.vocabulary == ["zebra", "kite", "blue square"]
    from_file = predictor.model.head.classifier.embeddings.clone()
    predictor.set_vocabulary(VOCABULARY)
    predictor.set_vocabulary(["zebra", "kite", "blue square"])  # same rows as the file's
    assert torch.allclose(predictor.model.head.classifier.embeddings, from_file, atol=1e-5)
    predictor.set_vocabulary(VOCABULARY)
    ensemble = str(tmp_path / "ensemble.npy")
    assert (
        dump.main(
            [
                "--clip",
                clip_weights,
                "--arch",
                predictor.cfg.MODEL.CLIP.ARCH,
                "--vocabulary",
                "custom",
                "--custom-vocabulary",
                "zebra",
                "--prompt-ensemble",
                "--out",
                ensemble,
            ]
        )
        == 0
    )
    with pytest.raises(ValueError, match="prompt"):
        predictor.set_vocabulary(ensemble)  # made with other prompts than the model's
    assert predictor.vocabulary == VOCABULARY


def test_bad_input_is_named(predictor, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        predictor.set_vocabulary(" , ")
    with pytest.raises(ValueError, match="more than once"):
        predictor.set_vocabulary(["kite", "kite"])
    with pytest.raises(FileNotFoundError, match="nowhere.jpg"):
        predictor(str(tmp_path / "nowhere.jpg"))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.jpg"):
        predictor(str(broken))
    with pytest.raises(ValueError, match="uint8"):
        predictor(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="format"):
        predictor(np.zeros((8, 8, 3), np.uint8), format="rgb")
    assert predictor.vocabulary == VOCABULARY


def test_a_vocabulary_is_built_in_without_the_configs_text_embeddings(
    synthetic_weights, tmp_path, monkeypatch
):
    """Given a vocabulary, the model is built with it: the config's TEXT_EMBEDDINGS (here a missing
    file, as the LVIS .npy on a machine without it) are neither read nor replaced by embedding the
    config's classes."""
    embedded = []
    encode = clip_text.encode_names
    monkeypatch.setattr(
        clip_text,
        "encode_names",
        lambda enc, names, *a, **k: embedded.append(list(names)) or encode(enc, names, *a, **k),
    )
    opts = ["MODEL.GRIDCLIP.TEXT_EMBEDDINGS", str(tmp_path / "missing.npy")]
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        GridCLIPPredictor.from_config_file(CONFIG, weights=synthetic_weights, opts=opts)
    embedded.clear()
    predictor = GridCLIPPredictor.from_config_file(
        CONFIG, weights=synthetic_weights, opts=opts, vocabulary=VOCABULARY, score_thresh=0.0
    )
    assert embedded == [VOCABULARY]  # only the names given, once
    assert predictor.vocabulary == VOCABULARY and predictor.cfg.MODEL.GRIDCLIP.TEXT_EMBEDDINGS == ""
    instances = predictor(PHOTO)
    assert len(instances) > 0 and set(instances.pred_class_names) <= set(VOCABULARY)


def test_class_names_survive_instances_cat(predictor):
    from detectron2.structures import Instances

    one = predictor(PHOTO)[:4]
    both = Instances.cat([one, one])
    assert isinstance(both.pred_class_names, ClassNames)
    assert both.pred_class_names == list(one.pred_class_names) * 2
    keep = both.scores > float(one.scores[1]) - 1e-6
    kept = both[keep]
    assert len(kept) == int(keep.sum()) and list(kept.pred_class_names) == [
        name for name, k in zip(both.pred_class_names, keep.tolist()) if k
    ]
    names = ClassNames(["a", "b", "c"])
    assert names == ["a", "b", "c"] and names[1] == "b" and names[-1] == "c" and "c" in names
    assert names[1:] == ["b", "c"] and names[np.array([2, 0])] == ["c", "a"]
    assert names[torch.tensor([True, False, True])] == ["a", "c"]
    assert repr(names) == "['a', 'b', 'c']" == str(names)  # prints as the list it equals
    with pytest.raises(IndexError, match="boolean index of 2 entries for 3 names"):
        names[torch.tensor([True, False])]


def test_images_are_converted_one_batch_at_a_time(predictor, monkeypatch):
    converted, seen_by_model = [], []
    as_model_array = predictor.as_model_array
    monkeypatch.setattr(
        predictor,
        "as_model_array",
        lambda image, format: converted.append(1) or as_model_array(image, format),
    )
    forward = predictor.model.forward
    monkeypatch.setattr(
        predictor.model,
        "forward",
        lambda inputs: seen_by_model.append(len(converted)) or forward(inputs),
    )
    rgb = np.asarray(Image.open(PHOTO).convert("RGB"))
    results = predictor.predict((rgb for _ in range(5)), format="RGB")  # batches of 2
    assert seen_by_model == [2, 4, 5] and len(results) == 5
    for instances in results:
        assert torch.equal(instances.scores, instances.scores.sort(descending=True).values)


def test_decoding_for_display_restores_the_models_threshold(predictor, monkeypatch):
    monkeypatch.setattr(predictor, "score_thresh", 0.5)
    protocol = predictor.model.test_score_thresh
    assert protocol < 0.5
    with predictor.decoding_for_display():
        # the model keeps scores > its threshold: exactly the float32 scores >= 0.5
        below = np.float32(predictor.model.test_score_thresh)
        assert below < np.float32(0.5) == np.nextafter(below, np.float32(1))
    assert predictor.model.test_score_thresh == protocol
    with pytest.raises(KeyError):
        with predictor.decoding_for_display():
            raise KeyError("inside")
    assert predictor.model.test_score_thresh == protocol
    with predictor.decoding_for_display(display=False):
        assert predictor.model.test_score_thresh == protocol


def test_the_embedding_cache_is_bounded(predictor, monkeypatch):
    monkeypatch.setattr(predictor, "cache_size", 2)
    for vocabulary in (["zebra"], ["kite"], ["flag"], VOCABULARY):
        predictor.set_vocabulary(vocabulary)
    assert list(predictor._embeddings) == [("flag",), tuple(VOCABULARY)]
    assert predictor.vocabulary == VOCABULARY


def test_the_image_conversion_is_public(predictor):
    rgba = np.zeros((6, 5, 4), np.uint8)
    rgba[..., 0] = 200
    assert predictor.as_model_array(rgba, "RGB").shape == (6, 5, 3)
    assert predictor.as_model_array(rgba, "BGR")[0, 0].tolist() == [0, 0, 200]  # model takes RGB
    assert predictor.as_model_array(np.full((6, 5), 7, np.uint8), "RGB").shape == (6, 5, 3)
    assert predictor.as_model_array(Image.fromarray(rgba).convert("L"), "RGB").shape == (6, 5, 3)
    with pytest.raises(ValueError, match="uint8"):
        predictor.as_model_array(np.zeros((6, 5, 3), np.float32), "RGB")
    with pytest.raises(TypeError, match="expected a path"):
        predictor.as_model_array(3, "RGB")
