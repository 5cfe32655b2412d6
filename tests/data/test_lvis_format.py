"""The LVIS-format loader, load_lvis_format_json: image paths of file_name-relative and
coco_url-only jsons, contiguous category ids, skipped and clipped boxes (one warning), and bad input
named in the errors."""

import logging
import os

import pytest

from detectron2.structures import BoxMode

from gridclip_d2.data.lvis_format import load_lvis_format_json


def test_file_name_relative_json(tmp_path, lvis_set):
    json_file, image_root = lvis_set.write(str(tmp_path), layout="file_name")
    records = load_lvis_format_json(json_file, image_root)
    assert [r["image_id"] for r in records] == [100, 101, 102]
    assert records[0]["file_name"] == os.path.join(image_root, "0000.png")
    assert (records[0]["height"], records[0]["width"]) == (lvis_set.H, lvis_set.W)
    # category ids 3, 7, 10 are contiguous ids 0, 1, 2
    assert [(o["category_id"], o["bbox"]) for o in records[0]["annotations"]] == [
        (0, [4, 5, 20, 10]),
        (1, [30, 8, 12, 30]),
    ]
    assert records[0]["annotations"][0]["bbox_mode"] == BoxMode.XYWH_ABS


@pytest.mark.parametrize("layout", ["coco_url", "coco_url_flat"])
def test_coco_url_only_json(tmp_path, lvis_set, layout):
    json_file, image_root = lvis_set.write(str(tmp_path), layout=layout)
    records = load_lvis_format_json(json_file, image_root)
    sub = "train2017" if layout == "coco_url" else ""
    assert [r["file_name"] for r in records] == [
        os.path.join(image_root, sub, f"{i:04d}.png") for i in range(3)
    ]
    assert all(os.path.isfile(r["file_name"]) for r in records)


def test_missing_json_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_lvis_format_json(str(tmp_path / "nope.json"), str(tmp_path))


def test_unknown_category_is_named(tmp_path, lvis_set):
    unknown = lvis_set.ANNOTATIONS + [(1, 99, [1, 1, 9, 9])]
    json_file, image_root = lvis_set.write(str(tmp_path), annotations=unknown)
    with pytest.raises(ValueError, match=r"annotations\.json'.*annotation 6 has category_id 99"):
        load_lvis_format_json(json_file, image_root)


def test_missing_image_is_named(tmp_path, lvis_set):
    json_file, image_root = lvis_set.write(str(tmp_path), skip_images=(1,))
    with pytest.raises(FileNotFoundError, match=r"1 of the 3 images .* first is '.*0001\.png'"):
        load_lvis_format_json(json_file, image_root)


def test_bad_boxes_are_skipped_or_clipped_with_a_warning(tmp_path, lvis_set, log_records):
    bad = lvis_set.ANNOTATIONS + [
        (0, 3, [10, 10, 0, 5]),  # zero width
        (1, 7, [5, 5, 8, -2]),  # negative height
        (1, 3, [70, 10, 10, 10]),  # right of the image
        (2, 7, [-5, 40, 20, 20]),  # crosses the left and bottom borders: clipped
    ]
    json_file, image_root = lvis_set.write(str(tmp_path), annotations=bad)
    records = load_lvis_format_json(json_file, image_root)
    boxes = [(o["category_id"], o["bbox"]) for r in records for o in r["annotations"]]
    assert len(boxes) == len(lvis_set.ANNOTATIONS) + 1
    assert (1, [0.0, 40.0, 15.0, 8.0]) in boxes
    warning = [
        r.getMessage()
        for r in log_records
        if r.levelno == logging.WARNING and "boxes, clipped" in r.getMessage()
    ]
    assert len(warning) == 1
    assert "skipped 3 of 9 boxes, clipped 1" in warning[0]
    assert "2 zero-area (annotation ids [6, 7])" in warning[0]
    assert "1 outside (annotation ids [8])" in warning[0]


def test_non_utf8_json_and_invalid_names_are_named(tmp_path, lvis_set):
    json_file, image_root = lvis_set.write(str(tmp_path))
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(
        open(json_file, "rb")
        .read()
        .replace(b'"kite"', '"cerf-volant \u00e9t\u00e9"'.encode("latin-1"))
    )
    with pytest.raises(ValueError, match=r"latin1.json' is not UTF-8 text"):
        load_lvis_format_json(str(latin1), image_root)
    surrogate = tmp_path / "surrogate.json"
    surrogate.write_text(open(json_file).read().replace('"kite"', '"ki\\udc80te"'))
    with pytest.raises(
        ValueError, match=r"category 7 has name 'ki\\udc80te', which is not valid Unicode"
    ):
        load_lvis_format_json(str(surrogate), image_root)
