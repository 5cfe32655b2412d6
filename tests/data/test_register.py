"""A user's own LVIS-format data: register_lvis_format (metadata, errors raised at registration,
the evaluation copy for incomplete jsons and skipped boxes) and the no-code path register_from_cfg.
The loader's own rules (image paths, category ids, boxes, bad input) are test_lvis_format.py's; the
small data set is conftest.py's ``lvis_set``."""

import json
import logging
import os
import uuid

import pytest
import torch

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import LVISEvaluator
from detectron2.structures import Boxes, BoxMode, Instances

from gridclip_d2 import add_gridclip_config
from gridclip_d2.backports import lvis_numpy_aliases
from gridclip_d2.data import register_from_cfg, register_lvis_format


def _unique(prefix):
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def records_of(tmp_path, lvis_set):
    def register(**kwargs):
        json_file, image_root = lvis_set.write(str(tmp_path), **kwargs)
        name = _unique("mine")
        register_lvis_format(name, json_file, image_root)
        return name, DatasetCatalog.get(name)

    return register


def _gt_as_detections(name, records, extra=None):
    evaluator = LVISEvaluator(name, distributed=False)
    evaluator.reset()
    for r in records:
        boxes = [
            BoxMode.convert(o["bbox"], o["bbox_mode"], BoxMode.XYXY_ABS) for o in r["annotations"]
        ]
        classes = [o["category_id"] for o in r["annotations"]]
        if extra and r["image_id"] in extra:  # (class, box) of an additional detection
            classes.append(extra[r["image_id"]][0])
            boxes.append(extra[r["image_id"]][1])
        inst = Instances((r["height"], r["width"]))
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.scores = torch.linspace(1.0, 0.9, len(boxes))
        inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
        evaluator.process([r], [{"instances": inst}])
    with lvis_numpy_aliases():  # Detectron2's own evaluator runs lvis-api
        return evaluator.evaluate()["bbox"]


def test_metadata_and_evaluation_of_a_file_name_relative_json(records_of):
    name, records = records_of(layout="file_name")
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["zebra", "kite", "traffic_cone"]  # category ids 3, 7, 10
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1, 10: 2}
    assert meta.class_frequency == ["f", "c", "r"]
    assert meta.image_count_per_class == [150, 12, 2]
    assert meta.novel_class_ids == [] and meta.evaluator_type == "lvis"
    assert meta.json_file.endswith("annotations.json"), "a complete json is evaluated as it is"
    assert [r["image_id"] for r in records] == [100, 101, 102]  # the loader's dicts
    assert records[0]["file_name"] == os.path.join(meta.image_root, "0000.png")
    results = _gt_as_detections(name, records)
    assert results["AP"] == pytest.approx(100.0)


def test_bad_json_raises_at_registration(tmp_path, lvis_set):
    """The loader's checks run when the set is registered, not when it is first loaded, and nothing
    is registered (the messages are test_lvis_format.py's)."""
    names = [_unique("mine") for _ in range(4)]
    with pytest.raises(FileNotFoundError, match="nope.json"):
        register_lvis_format(names[0], str(tmp_path / "nope.json"), str(tmp_path))
    unknown = lvis_set.ANNOTATIONS + [(1, 99, [1, 1, 9, 9])]
    json_file, image_root = lvis_set.write(str(tmp_path / "unknown"), annotations=unknown)
    with pytest.raises(ValueError, match=r"annotations\.json'.*annotation 6 has category_id 99"):
        register_lvis_format(names[1], json_file, image_root)
    json_file, image_root = lvis_set.write(str(tmp_path / "missing"), skip_images=(1,))
    with pytest.raises(FileNotFoundError, match=r"1 of the 3 images .* first is '.*0001\.png'"):
        register_lvis_format(names[2], json_file, image_root)
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(
        open(json_file, "rb")
        .read()
        .replace(b'"kite"', '"cerf-volant \u00e9t\u00e9"'.encode("latin-1"))
    )
    with pytest.raises(ValueError, match=r"latin1.json' is not UTF-8 text"):
        register_lvis_format(names[3], str(latin1), image_root)
    assert not set(names) & set(DatasetCatalog.list())


def test_skipped_and_clipped_boxes_give_an_evaluation_copy(records_of, lvis_set):
    bad = lvis_set.ANNOTATIONS + [
        (0, 3, [10, 10, 0, 5]),  # zero width
        (1, 7, [5, 5, 8, -2]),  # negative height
        (1, 3, [70, 10, 10, 10]),  # right of the image
        (2, 7, [-5, 40, 20, 20]),  # crosses the left and bottom borders: clipped
    ]
    name, records = records_of(annotations=bad)
    # the evaluator reads a copy without the skipped boxes and with the clipped one clipped
    meta = MetadataCatalog.get(name)
    assert meta.json_file != os.path.join(os.path.dirname(meta.image_root), "annotations.json")
    with open(meta.json_file) as f:
        copy = json.load(f)
    assert sorted(a["id"] for a in copy["annotations"]) == [1, 2, 3, 4, 5, 9]
    clipped = next(a for a in copy["annotations"] if a["id"] == 9)
    assert clipped["bbox"] == [0.0, 40.0, 15.0, 8.0]
    assert _gt_as_detections(name, records)["AP"] == pytest.approx(100.0)


def test_incomplete_json_gets_defaults_and_an_evaluation_copy(records_of, lvis_set, log_records):
    bare = [{"id": c["id"], "name": c["name"]} for c in lvis_set.CATEGORIES]
    name, records = records_of(categories=bare, complete=False)
    meta = MetadataCatalog.get(name)
    assert meta.image_count_per_class == [
        2,
        1,
        2,
    ]  # zebra, kite, traffic_cone, from the annotations
    assert meta.class_frequency == ["r", "r", "r"]
    messages = " ".join(r.getMessage() for r in log_records if r.levelno == logging.WARNING)
    assert "lack 'image_count'" in messages and "lack 'frequency'" in messages
    assert "completed copy" in messages
    with open(meta.json_file) as f:
        copy = json.load(f)
    first = next(img for img in copy["images"] if img["id"] == 100)
    assert first["neg_category_ids"] == [10] and first["not_exhaustive_category_ids"] == []
    assert all("area" in a for a in copy["annotations"])
    assert _gt_as_detections(name, records)["AP"] == pytest.approx(100.0)
    # absent classes are negatives: a confident traffic cone on image 100 is a false positive
    fp = {100: (2, [0.0, 0.0, 30.0, 30.0])}
    assert _gt_as_detections(name, records, extra=fp)["AP"] < 100.0


def test_register_twice(tmp_path, lvis_set):
    json_file, image_root = lvis_set.write(str(tmp_path))
    name = _unique("mine")
    register_lvis_format(name, json_file, image_root)
    register_lvis_format(name, json_file, image_root)  # same source: nothing happens
    other, _ = lvis_set.write(str(tmp_path / "other"))
    with pytest.raises(ValueError, match=f"'{name}' is already registered"):
        register_lvis_format(name, other, image_root)


def _cfg(**opts):
    cfg = get_cfg()
    add_gridclip_config(cfg)
    for key, value in opts.items():
        setattr(cfg.DATASETS.GRIDCLIP, key, value)
    return cfg


def test_register_from_cfg(tmp_path, lvis_set):
    assert register_from_cfg(_cfg()).DATASETS.TRAIN == get_cfg().DATASETS.TRAIN  # NAME unset

    train_json, train_images = lvis_set.write(str(tmp_path / "train"))
    test_json, test_images = lvis_set.write(str(tmp_path / "test"), layout="coco_url")
    name = _unique("shapes")
    cfg = _cfg(
        NAME=name,
        TRAIN_JSON=train_json,
        TRAIN_IMAGES=train_images,
        TEST_JSON=test_json,
        TEST_IMAGES=test_images,
    )
    cfg.freeze()
    assert register_from_cfg(cfg) is cfg and cfg.is_frozen()
    assert cfg.DATASETS.TRAIN == (f"{name}_train",) and cfg.DATASETS.TEST == (f"{name}_test",)
    assert len(DatasetCatalog.get(f"{name}_train")) == 3
    assert MetadataCatalog.get(f"{name}_test").thing_classes == ["zebra", "kite", "traffic_cone"]
    register_from_cfg(cfg.clone())  # a second call (e.g. in each worker) is harmless


def test_register_from_cfg_names_the_bad_option(tmp_path, lvis_set):
    json_file, _ = lvis_set.write(str(tmp_path))
    with pytest.raises(ValueError, match="TRAIN_JSON nor DATASETS.GRIDCLIP.TEST_JSON"):
        register_from_cfg(_cfg(NAME=_unique("x")))
    with pytest.raises(ValueError, match="DATASETS.GRIDCLIP.TRAIN_IMAGES"):
        register_from_cfg(_cfg(NAME=_unique("x"), TRAIN_JSON=json_file))
    with pytest.raises(FileNotFoundError, match=r"DATASETS.GRIDCLIP.TEST_JSON: '.*absent.json'"):
        register_from_cfg(
            _cfg(
                NAME=_unique("x"),
                TEST_JSON=str(tmp_path / "absent.json"),
                TEST_IMAGES=str(tmp_path),
            )
        )


def test_register_from_cfg_open_vocabulary_split_and_test_frequencies(tmp_path, lvis_set):
    train_json, train_images = lvis_set.write(str(tmp_path / "train"))
    # A small test set whose json has no frequencies: its own counts would make every class rare.
    no_freq = [{"id": c["id"], "name": c["name"]} for c in lvis_set.CATEGORIES]
    test_json, test_images = lvis_set.write(
        str(tmp_path / "test"), categories=no_freq, complete=False
    )
    name = _unique("split")
    cfg = _cfg(
        NAME=name,
        TRAIN_JSON=train_json,
        TRAIN_IMAGES=train_images,
        TEST_JSON=test_json,
        TEST_IMAGES=test_images,
        NOVEL_CLASSES=["traffic_cone"],
    )
    register_from_cfg(cfg)
    train = MetadataCatalog.get(f"{name}_train")
    assert train.thing_classes == ["zebra", "kite", "traffic_cone"] and train.novel_class_ids == [2]
    assert train.image_count_per_class == [150, 12, 0]  # novel: no training images
    labels = [
        a["category_id"] for d in DatasetCatalog.get(f"{name}_train") for a in d["annotations"]
    ]
    assert sorted(labels) == [0, 0, 1]  # the novel class's two boxes are dropped
    # r/c/f of the test set from the training split's counts (150 -> f, 12 -> c, novel 0 -> r)
    assert MetadataCatalog.get(f"{name}_test").class_frequency == ["f", "c", "r"]

    # "auto": the categories without training annotations, written back as names.
    no_kite = [a for a in lvis_set.ANNOTATIONS if a[1] != 7]
    auto_json, auto_images = lvis_set.write(str(tmp_path / "auto"), annotations=no_kite)
    name = _unique("auto")
    cfg = _cfg(NAME=name, TRAIN_JSON=auto_json, TRAIN_IMAGES=auto_images, NOVEL_CLASSES=["auto"])
    register_from_cfg(cfg)
    assert cfg.DATASETS.GRIDCLIP.NOVEL_CLASSES == ["kite"]
    assert MetadataCatalog.get(f"{name}_train").novel_class_ids == [1]
    # Without TEST_JSON nothing is evaluated (the config file's test set has other classes).
    assert cfg.DATASETS.TEST == ()

    with pytest.raises(
        ValueError, match=r"\['giraffe'\] are not categories of '.*annotations.json'"
    ):
        register_from_cfg(
            _cfg(
                NAME=_unique("bad"),
                TRAIN_JSON=train_json,
                TRAIN_IMAGES=train_images,
                NOVEL_CLASSES=["giraffe"],
            )
        )
    with pytest.raises(ValueError, match="NOVEL_CLASSES is set but DATASETS.GRIDCLIP.NAME is not"):
        register_from_cfg(_cfg(NOVEL_CLASSES=["kite"]))


def test_register_from_cfg_without_training_images(tmp_path, lvis_set):
    """An evaluation or the demo needs the training set's classes and split, not its images."""
    train_json, train_images = lvis_set.write(str(tmp_path / "train"), skip_images=(0, 1, 2))
    name = _unique("gone")
    opts = dict(NAME=name, TRAIN_JSON=train_json, TRAIN_IMAGES=train_images)
    with pytest.raises(FileNotFoundError, match="3 of the 3 images"):
        register_from_cfg(_cfg(**opts))
    cfg = register_from_cfg(_cfg(**opts), splits=("train",), check_train_images=False)
    assert MetadataCatalog.get(f"{name}_train").thing_classes == ["zebra", "kite", "traffic_cone"]
    assert cfg.DATASETS.TRAIN == (f"{name}_train",)
    os.remove(train_json)
    name = _unique("nojson")
    cfg = register_from_cfg(
        _cfg(NAME=name, TRAIN_JSON=train_json, TRAIN_IMAGES=train_images),
        splits=(),
        check_train_images=False,
    )
    assert f"{name}_train" not in DatasetCatalog.list()
