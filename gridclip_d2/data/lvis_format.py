"""LVIS-format jsons as Detectron2 dataset dicts: a validating loader (registration, metadata and
the evaluation copy are :mod:`.register`'s).

Detectron2 v0.6's ``load_lvis_json`` builds image paths from ``coco_url`` only and maps category id
c to c - 1. A user's json usually has ``file_name`` relative to the image folder and may number its
categories freely, so this module builds the dataset dicts itself; parsing and indexing stay
lvis-api's (``lvis.LVIS``). Errors name the json and the faulty entry.

Rules of the loader:
- image path: ``image_root/file_name`` when the image has ``file_name``; otherwise the tail of
  ``coco_url``: ``image_root/<folder>/<file>`` (Detectron2's COCO layout) if that exists, else
  ``image_root/<file>``. A referenced image that does not exist is an error naming it: skipping it
  would silently change the evaluation, since lvis-api scores every image of the json.
- categories: contiguous ids follow the json's category ids in increasing order and their ``name``
  fields are ``thing_classes``; two categories of one name are an error naming the json, the name
  and their ids (each name is one class of the vocabulary). An annotation whose category id is not
  among the categories is an error naming the json, the annotation id and the category id.
- boxes: zero-area (w or h <= 0, or not finite) and out-of-image boxes are skipped, boxes crossing
  the image border are clipped to it, and one warning per json counts them (Detectron2's habit).
"""

import json
import logging
import math
import os
from collections import Counter, defaultdict
from typing import Optional

from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

from .lvis_stats import FREQUENCIES

__all__ = [
    "build_records",
    "check_box",
    "issues_text",
    "load_lvis_api",
    "load_lvis_format_json",
]

logger = logging.getLogger(__name__)


def load_lvis_api(json_file: str):
    """``lvis.LVIS`` of ``json_file``, after checks that name the json and the faulty entry."""
    from lvis import LVIS

    local = PathManager.get_local_path(json_file)
    if not os.path.isfile(local):
        raise FileNotFoundError(f"LVIS-format json '{json_file}' does not exist")
    try:
        api = LVIS(local)
    except UnicodeDecodeError as e:
        raise ValueError(
            f"'{json_file}' is not UTF-8 text (byte {e.start}: {e.reason}); "
            "json files must be UTF-8"
        ) from None
    except json.JSONDecodeError as e:
        raise ValueError(f"'{json_file}' is not valid json: {e}") from e
    except (KeyError, TypeError, AssertionError) as e:
        raise ValueError(
            f"'{json_file}' is not in LVIS format ({type(e).__name__}: {e}); it needs 'images', "
            "'annotations' and 'categories' lists whose entries have an 'id'"
        ) from e
    data = api.dataset
    for kind, index, entries in (
        ("image", api.imgs, data["images"]),
        ("annotation", api.anns, data["annotations"]),
        ("category", api.cats, data["categories"]),
    ):
        if len(index) != len(entries):
            dup = [k for k, n in Counter(e["id"] for e in entries).items() if n > 1][:5]
            raise ValueError(f"'{json_file}': {kind} ids are not unique (repeated: {dup})")
    if not api.cats:
        raise ValueError(f"'{json_file}' has no categories")
    for cat in data["categories"]:
        if not isinstance(cat.get("name"), str) or not cat["name"]:
            raise ValueError(f"'{json_file}': category {cat['id']} has no 'name'")
        try:
            cat["name"].encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"'{json_file}': category {cat['id']} has name {ascii(cat['name'])}, which is not "
                "valid Unicode text (a lone surrogate escape)"
            ) from None
        freq = cat.get("frequency")
        if freq is not None and freq not in FREQUENCIES:
            raise ValueError(
                f"'{json_file}': category {cat['id']} has frequency {freq!r}; expected r, c or f"
            )
    ids_of = {}  # each name is one class of the vocabulary (names are stripped, as there)
    for cat in data["categories"]:
        ids_of.setdefault(cat["name"].strip(), []).append(cat["id"])
    twice = {name: ids for name, ids in ids_of.items() if len(ids) > 1}
    if twice:
        shown = "; ".join(f"{name!r} (ids {ids})" for name, ids in list(twice.items())[:5])
        raise ValueError(
            f"'{json_file}': categories share a name: {shown}{'; ...' if len(twice) > 5 else ''}. "
            "Each category is one class, told apart by its name: rename them, or merge them "
            "into one category"
        )
    for img in data["images"]:
        for key in ("height", "width"):
            value = img.get(key)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
                or value != int(value)
            ):
                raise ValueError(
                    f"'{json_file}': image {img['id']} has {key} {value!r}; expected "
                    "a positive whole number of pixels"
                )
        if "file_name" not in img and "coco_url" not in img:
            raise ValueError(
                f"'{json_file}': image {img['id']} has neither 'file_name' nor 'coco_url'"
            )
    for ann in data["annotations"]:
        if ann.get("image_id") not in api.imgs:
            raise ValueError(
                f"'{json_file}': annotation {ann['id']} refers to image id {ann.get('image_id')}, "
                "which is not among the json's images"
            )
        if ann.get("category_id") not in api.cats:
            raise ValueError(
                f"'{json_file}': annotation {ann['id']} has category_id {ann.get('category_id')}, "
                f"which is not among the json's {len(api.cats)} categories"
            )
        bbox = ann.get("bbox")
        if (
            not isinstance(bbox, (list, tuple))
            or len(bbox) != 4
            or not all(isinstance(v, (int, float)) for v in bbox)
        ):
            raise ValueError(
                f"'{json_file}': annotation {ann['id']} has bbox {bbox!r}; expected "
                "[x, y, width, height]"
            )
    return api


def check_box(bbox, width: int, height: int):
    """("ok" | "clipped" | "zero-area" | "outside", XYWH box clipped to the image)."""
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return "zero-area", None
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
    if x1 <= x0 or y1 <= y0:
        return "outside", None
    if (x0, y0, x1, y1) == (x, y, x + w, y + h):
        return "ok", [x, y, w, h]
    return "clipped", [x0, y0, x1 - x0, y1 - y0]


def _image_path(img: dict, image_root: str) -> str:
    if "file_name" in img:
        return os.path.join(image_root, img["file_name"])
    parts = img["coco_url"].split("/")
    flat = os.path.join(image_root, parts[-1])
    if len(parts) < 2:
        return flat
    in_folder = os.path.join(image_root, parts[-2], parts[-1])
    return in_folder if PathManager.exists(in_folder) or not PathManager.exists(flat) else flat


def build_records(api, json_file: str, image_root: str, check_images: bool = True):
    """Dataset dicts plus {status: [annotation ids]} of the boxes that were not "ok"."""
    cat_ids = sorted(api.cats)
    contiguous = {c: i for i, c in enumerate(cat_ids)}
    issues, records, missing = defaultdict(list), [], []
    for image_id in sorted(api.imgs):
        img = api.imgs[image_id]
        path = _image_path(img, image_root)
        height, width = int(img["height"]), int(img["width"])
        if check_images and not PathManager.exists(path):
            missing.append(path)
        objs = []
        for ann in api.img_ann_map[image_id]:
            status, box = check_box(ann["bbox"], width, height)
            if status != "ok":
                issues[status].append(ann["id"])
            if box is None:
                continue
            obj = {
                "bbox": box,
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": contiguous[ann["category_id"]],
            }
            if isinstance(ann.get("segmentation"), list) and ann["segmentation"]:
                obj["segmentation"] = ann["segmentation"]
            objs.append(obj)
        records.append(
            {
                "file_name": path,
                "height": height,
                "width": width,
                "image_id": image_id,
                "neg_category_ids": img.get("neg_category_ids", []),
                "not_exhaustive_category_ids": img.get("not_exhaustive_category_ids", []),
                "annotations": objs,
            }
        )
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(records)} images listed in '{json_file}' do not exist "
            f"under image root '{image_root}'; the first is '{missing[0]}'"
        )
    return records, issues


def issues_text(issues) -> str:
    return ", ".join(
        f"{len(ids)} {status} (annotation ids {ids[:5]}{' ...' if len(ids) > 5 else ''})"
        for status, ids in sorted(issues.items())
    )


def load_lvis_format_json(json_file: str, image_root: str, dataset_name: Optional[str] = None):
    """Dataset dicts (Detectron2 format) of an LVIS-format json; see the module docstring for the
    rules. ``dataset_name`` only labels the log."""
    api = load_lvis_api(json_file)
    records, issues = build_records(api, json_file, image_root)
    skipped = sum(len(v) for k, v in issues.items() if k != "clipped")
    if issues:
        logger.warning(
            f"{json_file}: skipped {skipped} of {len(api.anns)} boxes, clipped "
            f"{len(issues.get('clipped', []))} to the image: {issues_text(issues)}"
        )
    logger.info(
        f"Loaded {len(records)} images from {json_file}"
        + (f" for dataset '{dataset_name}'" if dataset_name else "")
    )
    return records
