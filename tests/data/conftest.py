"""Shared fixtures of the LVIS-format tests (``test_lvis_format.py``, ``test_register.py``): a small
set of 3 images and its json, written the way a user's own set comes, and the records that the
loader and the registration log."""

import json
import logging
import os
from types import SimpleNamespace

import pytest
from PIL import Image

H, W = 48, 64
# category ids need not be 1..C: contiguous ids follow the json's ids in increasing order
CATEGORIES = [
    {"id": 7, "name": "kite", "frequency": "c", "image_count": 12},
    {"id": 3, "name": "zebra", "frequency": "f", "image_count": 150},
    {"id": 10, "name": "traffic_cone", "frequency": "r", "image_count": 2},
]
# (image index, category id, XYWH box)
ANNOTATIONS = [
    (0, 3, [4, 5, 20, 10]),
    (0, 7, [30, 8, 12, 30]),
    (1, 10, [10, 10, 40, 30]),
    (2, 3, [0, 0, 64, 48]),
    (2, 10, [50, 20, 10, 20]),
]


def write_lvis_format_set(
    root,
    layout="file_name",
    annotations=ANNOTATIONS,
    categories=CATEGORIES,
    complete=True,
    skip_images=(),
):
    """Write 3 images and an LVIS-format json under ``root``; returns (json path, image root).

    layout: "file_name" (relative file_name), "coco_url" (only coco_url, images in root/<split>/),
    "coco_url_flat" (only coco_url, images directly in the image root).
    """
    image_root = os.path.join(root, "images")
    images = []
    for i in range(3):
        name = f"{i:04d}.png"
        sub = "train2017" if layout == "coco_url" else ""
        os.makedirs(os.path.join(image_root, sub), exist_ok=True)
        if i not in skip_images:
            Image.new("RGB", (W, H), (10 * i, 100, 200)).save(os.path.join(image_root, sub, name))
        img = {"id": 100 + i, "height": H, "width": W}
        if layout == "file_name":
            img["file_name"] = name
        else:
            img["coco_url"] = f"http://images.example.org/train2017/{name}"
        if complete:
            img.update(neg_category_ids=[], not_exhaustive_category_ids=[])
        images.append(img)
    anns = []
    for k, (i, cat, box) in enumerate(annotations):
        ann = {"id": k + 1, "image_id": 100 + i, "category_id": cat, "bbox": box}
        if complete:
            ann["area"] = box[2] * box[3]
        anns.append(ann)
    if complete:  # absent categories are negatives, as an exhaustively annotated set has it
        for img in images:
            present = {a["category_id"] for a in anns if a["image_id"] == img["id"]}
            img["neg_category_ids"] = [c["id"] for c in categories if c["id"] not in present]
    json_file = os.path.join(root, "annotations.json")
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": categories}, f)
    return json_file, image_root


@pytest.fixture
def lvis_set():
    """The small LVIS-format set: ``.write(root, **options)`` (:func:`write_lvis_format_set`) and
    its ``.H``, ``.W``, ``.CATEGORIES`` and ``.ANNOTATIONS``."""
    return SimpleNamespace(
        write=write_lvis_format_set,
        H=H,
        W=W,
        CATEGORIES=CATEGORIES,
        ANNOTATIONS=ANNOTATIONS,
    )


@pytest.fixture
def log_records():
    """Records logged by gridclip_d2.data.lvis_format (the loader) and gridclip_d2.data.register
    (independent of other loggers' propagation)."""
    records = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = records.append
    logs = [logging.getLogger(f"gridclip_d2.data.{m}") for m in ("lvis_format", "register")]
    for log in logs:
        log.addHandler(handler)
    yield records
    for log in logs:
        log.removeHandler(handler)
