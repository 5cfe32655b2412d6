"""Detectron2's LVISEvaluator (real lvis-api) on the synthetic validation set: ground truth fed
back as detections scores AP 100; worse detections score less."""

import pytest
import torch

from detectron2.data import DatasetCatalog
from detectron2.evaluation import LVISEvaluator
from detectron2.structures import Boxes, BoxMode, Instances

import gridclip_d2  # noqa: F401  (registration)
from gridclip_d2.backports import lvis_numpy_aliases
from gridclip_d2.data.synthetic import SYNTHETIC_CATEGORIES

METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"]


def _outputs(record, shift=0.0, class_offset=0):
    """Instances holding the record's ground truth, optionally moved or relabelled."""
    boxes = [
        BoxMode.convert(o["bbox"], o["bbox_mode"], BoxMode.XYXY_ABS) for o in record["annotations"]
    ]
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)  # N x 4
    widths = boxes[:, 2] - boxes[:, 0]
    boxes[:, [0, 2]] += shift * widths[:, None]
    classes = torch.tensor([o["category_id"] for o in record["annotations"]], dtype=torch.int64)
    inst = Instances((record["height"], record["width"]))
    inst.pred_boxes = Boxes(boxes)
    inst.scores = torch.linspace(0.9, 0.5, len(boxes))
    inst.pred_classes = (classes + class_offset) % len(SYNTHETIC_CATEGORIES)
    return [{"instances": inst}]


def _evaluate(records, **kwargs):
    evaluator = LVISEvaluator("synthetic_val", distributed=False)
    evaluator.reset()
    for record in records:
        evaluator.process([record], _outputs(record, **kwargs))
    with lvis_numpy_aliases():  # Detectron2's own evaluator runs lvis-api
        return evaluator.evaluate()["bbox"]


@pytest.fixture(scope="module")
def val_records():
    return DatasetCatalog.get("synthetic_val")


def test_ground_truth_scores_ap_100(val_records):
    results = _evaluate(val_records)
    for metric in METRICS:
        if metric == "APl" and results[metric] == -100.0:
            continue  # lvis-api's "no ground truth in this group"
        assert results[metric] == pytest.approx(100.0, abs=1e-6), metric


def test_worse_detections_score_less(val_records):
    # boxes moved by 30% of their width: IoU about 0.54, so they only count at the low thresholds
    moved = _evaluate(val_records, shift=0.3)
    assert moved["AP50"] == pytest.approx(100.0, abs=1e-6)
    assert 0 < moved["AP"] < 40
    # right boxes, wrong classes: every image lists its absent classes as negatives
    relabelled = _evaluate(val_records, class_offset=1)
    assert relabelled["AP"] < 1
    # half of the images without detections: recall halves
    half = _evaluate(val_records[::2])
    assert 30 < half["AP"] < 70
