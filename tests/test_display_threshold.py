"""tools/display_threshold.py: matching of shown detections to objects, and the threshold table on a
labelled set."""

import importlib.util
import os

import numpy as np
import pytest
import torch

from detectron2.structures import Boxes, BoxMode, Instances

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "GridCLIP_synthetic.yaml")
spec = importlib.util.spec_from_file_location(
    "display_threshold", os.path.join(REPO, "tools", "display_threshold.py")
)
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)


def test_match_counts_each_object_once_and_only_with_its_class():
    annotations = [
        {"bbox": [0, 0, 10, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0},
        {"bbox": [20, 20, 40, 40], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1},
    ]
    shown = Instances(
        (50, 50),
        pred_boxes=Boxes(
            torch.tensor([[0, 0, 10, 10], [1, 0, 10, 10], [20, 20, 40, 40], [20, 20, 39, 40.0]])
        ),
        scores=torch.tensor([0.9, 0.8, 0.7, 0.6]),
        pred_classes=torch.tensor([0, 0, 0, 1]),
    )
    # a duplicate of the first object, a box on the second object with the wrong class, then right
    assert tool.match(shown, annotations, 0.5).tolist() == [True, False, False, True]
    rows = tool.threshold_table(
        np.array([0.9, 0.8, 0.7, 0.6]),
        np.array([True, False, False, True]),
        num_gt=2,
        thresholds=[0.65, 0.85],
    )
    assert rows[0] == pytest.approx((0.65, 3, 1 / 3, 1 / 2, 0.4))
    assert rows[1] == pytest.approx((0.85, 1, 1.0, 0.5, 2 / 3))


def test_the_recommended_threshold_is_the_middle_of_the_near_best_run():
    f1 = [0.50, 0.70, 0.795, 0.80, 0.792, 0.60, 0.79]  # the last: near best but not adjacent
    rows = [(round(0.1 * (k + 1), 2), 0, 0.0, 0.0, v) for k, v in enumerate(f1)]
    best, low, high, chosen = tool.choose_threshold(rows, within=0.01)
    assert best[0] == 0.4 and (low, high) == (0.3, 0.5) and chosen == 0.4
    # a slightly different rounding moves the best row, not the recommendation
    rows[2] = (0.3, 0, 0.0, 0.0, 0.801)
    best, low, high, chosen = tool.choose_threshold(rows, within=0.01)
    assert best[0] == 0.3 and (low, high) == (0.3, 0.5) and chosen == 0.4


def test_threshold_table_on_a_labelled_set(synthetic_weights, capsys):
    best = tool.main(
        ["--config-file", CONFIG, "--max-images", "3", "--opts", "MODEL.WEIGHTS", synthetic_weights]
        + ["DATASETS.TEST", "('synthetic_val',)"]  # chosen on val, never on the reported test
    )
    out = capsys.readouterr().out
    assert "Displayed detections on synthetic_val (3 images" in out
    assert out.count("\n| 0.") == 19 and f"DISPLAY.SCORE_THRESH {best:.2f}" in out
    with pytest.raises(SystemExit, match="--dataset: nowhere is not a registered data set"):
        tool.main(["--config-file", CONFIG, "--dataset", "nowhere"])
