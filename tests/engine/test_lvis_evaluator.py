"""OpenVocabLVISEvaluator on a small LVIS-format json, through lvis-api."""

import json
import math

import pytest
import torch

from detectron2.data import MetadataCatalog
from detectron2.structures import Boxes, Instances

from gridclip_d2.engine import OpenVocabLVISEvaluator
from gridclip_d2.engine.lvis_evaluator import LVIS_MAX_DETS

# 4 classes: 0, 1 rare (novel), 2 common, 3 frequent. Boxes XYWH.
GT = {
    1: [(0, [10, 10, 30, 30]), (2, [50, 50, 20, 40])],
    2: [(1, [5, 5, 40, 20]), (3, [60, 10, 30, 30])],
    3: [(0, [20, 30, 40, 40]), (3, [0, 0, 25, 25]), (2, [70, 70, 25, 25])],
}
FREQ = ["r", "r", "c", "f"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("lvis")
    cats = [
        {
            "id": i + 1,
            "name": f"thing{i}",
            "synonyms": [f"thing{i}"],
            "frequency": f,
            "image_count": 1,
            "instance_count": 1,
            "def": "",
            "synset": f"thing{i}.n.01",
        }
        for i, f in enumerate(FREQ)
    ]
    images, anns = [], []
    for img_id, objs in GT.items():
        images.append(
            {
                "id": img_id,
                "width": 100,
                "height": 100,
                "file_name": f"{img_id}.jpg",
                "neg_category_ids": [],
                "not_exhaustive_category_ids": [],
            }
        )
        for c, box in objs:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img_id,
                    "category_id": c + 1,
                    "bbox": box,
                    "area": box[2] * box[3],
                }
            )
    json_file = root / "tiny_lvis.json"
    json_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    name = "test_engine_tiny_lvis"
    MetadataCatalog.get(name).set(
        json_file=str(json_file),
        thing_classes=[c["name"] for c in cats],
        evaluator_type="lvis",
        class_frequency=FREQ,
    )
    return name


def _evaluate(name, novel, keep=lambda c: True, tmp=None, groups=None):
    ev = OpenVocabLVISEvaluator(
        name, distributed=False, output_dir=tmp, novel_class_ids=novel, class_groups=groups
    )
    ev.reset()
    for img_id, objs in GT.items():
        objs = [(c, b) for c, b in objs if keep(c)]
        inst = Instances((100, 100))
        xyxy = [[x, y, x + w, y + h] for _, (x, y, w, h) in objs]
        inst.pred_boxes = Boxes(torch.tensor(xyxy, dtype=torch.float32).reshape(-1, 4))
        inst.scores = torch.ones(len(objs))
        inst.pred_classes = torch.tensor([c for c, _ in objs], dtype=torch.int64)
        ev.process([{"image_id": img_id}], [{"instances": inst}])
    return ev.evaluate()["bbox"]


def test_ground_truth_as_detections_is_100(dataset, tmp_path):
    bbox = _evaluate(dataset, novel=[0, 1], tmp=str(tmp_path))
    for k in ("AP", "APr", "APc", "APf", "APnovel", "APbase"):
        assert bbox[k] == pytest.approx(100.0), k
    results = json.loads((tmp_path / "lvis_instances_results.json").read_text())
    assert sorted({r["category_id"] for r in results}) == [1, 2, 3, 4]  # 1-based json ids


def test_novel_and_base_ap_follow_the_split(dataset):
    # Detect only the base classes: novel AP 0, base AP 100, AP = their mean over the 4 classes.
    bbox = _evaluate(dataset, novel=[0, 1], keep=lambda c: c >= 2)
    assert bbox["APnovel"] == pytest.approx(0.0) and bbox["APr"] == pytest.approx(0.0)
    assert bbox["APbase"] == pytest.approx(100.0)
    assert bbox["AP"] == pytest.approx(50.0)
    # A split that is not the rare group: novel = {3} (frequent).
    bbox = _evaluate(dataset, novel=[3], keep=lambda c: c != 3)
    assert bbox["APnovel"] == pytest.approx(0.0) and bbox["APf"] == pytest.approx(0.0)
    assert bbox["APbase"] == pytest.approx(100.0) and bbox["AP"] == pytest.approx(75.0)


def test_each_class_group_gets_its_own_ap(dataset):
    # The synthetic set's three groups, here: base {2, 3}, two novel groups {0} and {1}. Only
    # class 1's boxes are missed: its group alone drops to 0.
    groups = {"base": [2, 3], "novel-compositional": [0], "novel-concept": [1]}
    bbox = _evaluate(dataset, novel=[0, 1], keep=lambda c: c != 1, groups=groups)
    assert bbox["AP-base"] == pytest.approx(100.0)
    assert bbox["AP-novel-compositional"] == pytest.approx(100.0)
    assert bbox["AP-novel-concept"] == pytest.approx(0.0)
    assert bbox["APnovel"] == pytest.approx(50.0)  # over both novel groups
    with pytest.raises(ValueError, match=r"class_groups \['novel-concept'\] .* outside its 4"):
        OpenVocabLVISEvaluator(dataset, distributed=False, class_groups={"novel-concept": [4]})


def test_no_split_reports_standard_metrics_only(dataset):
    bbox = _evaluate(dataset, novel=[])
    assert "APnovel" not in bbox and bbox["AP"] == pytest.approx(100.0)
    assert LVIS_MAX_DETS == 300


def test_bad_novel_ids(dataset):
    with pytest.raises(
        ValueError, match="outside the 4 classes of the test set 'test_engine_tiny_lvis'"
    ):
        OpenVocabLVISEvaluator(dataset, distributed=False, novel_class_ids=[4])


def test_no_predictions_gives_nan(dataset):
    bbox = _evaluate(dataset, novel=[0], keep=lambda c: False)
    assert math.isnan(bbox["AP"])
