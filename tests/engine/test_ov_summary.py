"""The open-vocabulary summary: values, split naming and formatting."""

import math

import pytest

from gridclip_d2.engine import format_open_vocabulary_summary, open_vocabulary_summary

# As OpenVocabLVISEvaluator returns them (lvis-api's -1 x 100 for a group without ground truth).
BBOX = {
    "AP": 25.0,
    "AP50": 40.0,
    "AP75": 26.0,
    "APs": 10.0,
    "APm": 20.0,
    "APl": 30.0,
    "APr": 15.5,
    "APc": 22.25,
    "APf": 31.0,
    "APnovel": 15.5,
    "APbase": 27.0,
}


def test_base_split_novel_is_rare():
    freq = ["r", "r", "c", "f", "f"]
    s = open_vocabulary_summary(BBOX, num_classes=5, novel_class_ids=[1, 0], class_frequency=freq)
    assert s == {
        "AP": 25.0,
        "APr": 15.5,
        "APc": 22.25,
        "APf": 31.0,
        "APnovel": 15.5,
        "APbase": 27.0,
        "num_base_classes": 3.0,
        "num_novel_classes": 2.0,
        "novel_is_rare": 1.0,
    }
    assert all(isinstance(v, float) for v in s.values())  # EvalHook stores them as scalars
    text = format_open_vocabulary_summary(s, "lvis_v1_val", "lvis_v1_train_base")
    assert text.splitlines() == [
        "Open-vocabulary summary on lvis_v1_val "
        "(trained on lvis_v1_train_base: 3 base + 2 novel classes (novel = rare)):",
        "  AP 25.0 | APr (novel) 15.5 | APc 22.2 | APf 31.0",
        "  AP novel 15.5 | AP base 27.0",
    ]


def test_custom_split_is_not_called_rare():
    s = open_vocabulary_summary(
        BBOX, 5, novel_class_ids=[4], class_frequency=["r", "r", "c", "f", "f"]
    )
    assert s["novel_is_rare"] == 0.0 and s["num_novel_classes"] == 1.0
    text = format_open_vocabulary_summary(s, "val", "train")
    assert "4 base + 1 novel classes):" in text and "APr 15.5" in text and "(novel)" not in text


def test_no_split_and_missing_groups():
    bbox = dict(BBOX, APr=-100.0)  # no rare class has ground truth
    del bbox["APnovel"], bbox["APbase"]
    s = open_vocabulary_summary(bbox, 3)
    assert math.isnan(s["APr"]) and math.isnan(s["APnovel"])
    assert s["APbase"] == 25.0 and s["num_novel_classes"] == 0.0
    text = format_open_vocabulary_summary(s, "synthetic_val", "synthetic_train")
    assert "all 3 classes seen in training (no novel split)" in text
    assert "APr n/a" in text and "AP novel" not in text


def test_bad_input():
    with pytest.raises(ValueError, match="outside the 3 test classes"):
        open_vocabulary_summary(BBOX, 3, novel_class_ids=[3])
    with pytest.raises(KeyError, match="no 'AP'"):
        open_vocabulary_summary({"APr": 1.0}, 3)


def test_class_groups_line():
    """The synthetic set's groups: one more line, in exactly this form, after the usual ones."""
    bbox = dict(
        BBOX, **{"AP-base": 60.25, "AP-novel-compositional": 41.0, "AP-novel-concept": -100}
    )
    groups = {"base": [2, 3, 4], "novel-compositional": [0], "novel-concept": [1]}
    s = open_vocabulary_summary(bbox, num_classes=5, novel_class_ids=[0, 1], class_groups=groups)
    assert s["AP-base"] == 60.25 and s["AP-novel-compositional"] == 41.0
    assert math.isnan(s["AP-novel-concept"])
    lines = format_open_vocabulary_summary(s, "synthetic_test", "synthetic_train").split("\n")
    assert lines[-2] == "  AP novel 15.5 | AP base 27.0"
    assert lines[-1] == "  AP base 60.2 | AP novel-compositional 41.0 | AP novel-concept n/a"
