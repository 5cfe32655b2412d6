"""A user's own LVIS-format data set: its registration with Detectron2's catalogs, its metadata and
the json its evaluation reads (the loader is :mod:`.lvis_format`; the no-code path from the config,
``DATASETS.GRIDCLIP.*``, is :mod:`.register_from_cfg`).

Detectron2 v0.6's ``register_lvis_instances`` takes its metadata from the built-in LVIS tables
(``get_lvis_instances_meta`` raises for any other name), so this module registers the dataset dicts
of :func:`.lvis_format.load_lvis_format_json` with metadata made from the json itself. The json is
read and checked at registration; the dataset dicts are built when the data set is first loaded.

Rules of the registration:
- metadata: ``image_count_per_class`` and ``class_frequency`` come from the json's categories
  (``image_count``, ``frequency``); when absent they are counted from the annotations (LVIS rule:
  r < 10 images, c 10-99, f >= 100) with a warning.
- evaluation: lvis-api needs every image's ``neg_category_ids`` and ``not_exhaustive_category_ids``,
  every category's ``frequency`` and every annotation's ``area``. When some are missing, or boxes
  were skipped or clipped, the evaluator reads a completed copy (written to the temp dir, named in
  the log and in the metadata's ``json_file``): absent categories of an image count as negatives
  (the image is taken as exhaustively annotated), skipped boxes are dropped, clipped ones clipped.
"""

import copy
import hashlib
import logging
import os
import tempfile
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.file_io import PathManager

from ..atomic_write import atomic_json_dump
from .lvis_format import build_records, check_box, issues_text, load_lvis_api, load_lvis_format_json
from .lvis_stats import FREQUENCIES, images_per_category, lvis_frequency

__all__ = ["register_lvis_format"]

logger = logging.getLogger(__name__)

_REGISTERED: Dict[str, tuple] = {}  # name -> (json file, image root) registered here


def _category_metadata(
    api, json_file: str, train_image_count: Optional[Dict[str, int]] = None
) -> dict:
    """Class metadata of the json. ``train_image_count`` (name -> images of the training split) sets
    the r/c/f frequencies when the json has none: a test split's own counts would make every class
    of a small test set "rare"."""
    cats = [api.cats[c] for c in sorted(api.cats)]
    if all(isinstance(c.get("image_count"), int) for c in cats):
        image_count = [c["image_count"] for c in cats]
    else:
        per_cat = images_per_category(
            (ann["category_id"], ann["image_id"])
            for ann in api.anns.values()
            if check_box(
                ann["bbox"], api.imgs[ann["image_id"]]["width"], api.imgs[ann["image_id"]]["height"]
            )[1]
            is not None
        )
        image_count = [per_cat.get(c["id"], 0) for c in cats]
        logger.warning(f"{json_file}: categories lack 'image_count'; counted from the annotations")
    if all(c.get("frequency") in FREQUENCIES for c in cats):
        frequency = [c["frequency"] for c in cats]
    elif train_image_count is not None:
        frequency = [
            c.get("frequency") or lvis_frequency(train_image_count.get(c["name"], 0)) for c in cats
        ]
        logger.info(
            f"{json_file}: category frequencies set from the training split's image counts "
            "(LVIS rule: r < 10 images, c 10-99, f >= 100; a class it lacks is r)"
        )
    else:
        frequency = [c.get("frequency") or lvis_frequency(n) for c, n in zip(cats, image_count)]
        logger.warning(
            f"{json_file}: categories lack 'frequency'; set from the image counts "
            "(LVIS rule: r < 10 images, c 10-99, f >= 100)"
        )
    return {
        "thing_classes": [c["name"] for c in cats],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(cats)},
        "class_frequency": frequency,
        "image_count_per_class": image_count,
    }


def _novel_ids(
    novel_classes: Sequence[str], classes: List[str], annotated: set, json_file: str, option: str
) -> List[int]:
    """Contiguous ids of the novel classes: names, or ["auto"] = classes without annotations
    (``annotated``: contiguous ids that have some)."""
    novel_classes = [str(n) for n in novel_classes]
    if not novel_classes:
        return []
    if novel_classes == ["auto"]:
        return [i for i in range(len(classes)) if i not in annotated]
    if "auto" in novel_classes:
        raise ValueError(f'{option}: "auto" cannot be combined with class names ({novel_classes})')
    unknown = [n for n in novel_classes if n not in classes]
    if unknown:
        raise ValueError(
            f"{option}: {unknown} are not categories of '{json_file}' "
            f"(it has {len(classes)}: {classes[:10]}{' ...' if len(classes) > 10 else ''})"
        )
    return sorted(classes.index(n) for n in set(novel_classes))


def _without_novel(records: List[dict], novel_ids: Sequence[int], name: str) -> List[dict]:
    """The training dicts of a user's open-vocabulary split: novel classes' boxes dropped."""
    novel, dropped = set(novel_ids), 0
    for r in records:
        kept = [a for a in r["annotations"] if a["category_id"] not in novel]
        dropped += len(r["annotations"]) - len(kept)
        r["annotations"] = kept
    logger.info(f"Dataset '{name}': dropped {dropped} boxes of its {len(novel)} novel classes")
    return records


def _evaluation_json(name: str, json_file: str, api, issues, frequency: List[str]) -> str:
    """``json_file`` when lvis-api can evaluate it as it is, else the path of a completed copy."""
    data = api.dataset
    needs = [
        k
        for k, entries, key in (
            ("images without neg_category_ids", data["images"], "neg_category_ids"),
            (
                "images without not_exhaustive_category_ids",
                data["images"],
                "not_exhaustive_category_ids",
            ),
            ("categories without frequency", data["categories"], "frequency"),
            ("annotations without area", data["annotations"], "area"),
        )
        if any(key not in e for e in entries)
    ]
    if issues:
        needs.append(f"boxes skipped or clipped: {issues_text(issues)}")
    if not needs:
        return json_file
    data = copy.deepcopy(data)
    freq = dict(zip(sorted(api.cats), frequency))
    for cat in data["categories"]:
        cat.setdefault("frequency", freq[cat["id"]])
    annotations = []
    for ann in data["annotations"]:
        img = api.imgs[ann["image_id"]]
        _, box = check_box(ann["bbox"], img["width"], img["height"])
        if box is None:
            continue
        ann["bbox"] = box
        ann.setdefault("area", box[2] * box[3])
        annotations.append(ann)
    data["annotations"] = annotations
    present = defaultdict(set)
    for ann in annotations:
        present[ann["image_id"]].add(ann["category_id"])
    for img in data["images"]:
        absent = [c for c in sorted(api.cats) if c not in present[img["id"]]]
        img.setdefault("neg_category_ids", absent)
        img.setdefault("not_exhaustive_category_ids", [])
    stat = os.stat(PathManager.get_local_path(json_file))
    digest = hashlib.sha1(
        f"{os.path.abspath(json_file)}|{stat.st_size}|{stat.st_mtime_ns}".encode()
    ).hexdigest()[:12]
    out_dir = os.path.join(tempfile.gettempdir(), "gridclip_d2_lvis_format")
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, f"{name}-{digest}.json")
    atomic_json_dump(data, out)
    logger.warning(
        f"{json_file} is not ready for lvis-api evaluation ({'; '.join(needs)}); "
        f"dataset '{name}' is evaluated against a completed copy: {out}"
    )
    return out


def register_lvis_format(
    name: str,
    json_file: str,
    image_root: str,
    metadata: dict = None,
    *,
    novel_classes: Sequence[str] = (),
    train_image_count: Optional[Dict[str, int]] = None,
    check_images: bool = True,
):
    """Register a user's LVIS-format data set as ``name`` (DatasetCatalog + MetadataCatalog).

    The json is read and checked now (categories give ``thing_classes``; missing json, unknown
    category ids and missing image files raise, naming them); the dataset dicts are built when the
    data set is first loaded. ``metadata`` adds or overrides keys.
    Registering the same name again with the same json and image root does nothing.

    Args:
        novel_classes: the open-vocabulary split of a training set: novel category names, or
            ``["auto"]`` (categories without annotations). Their boxes are dropped from the loaded
            dicts, their ids go to the metadata's ``novel_class_ids`` (left out of the
            classification loss; AP novel / AP base at evaluation).
        train_image_count: for a test set, name -> training images per class; sets the r/c/f
            frequencies when the json has none (see ``_category_metadata``).
        check_images: False registers the metadata without checking that the images exist (a
            training set needed only for its classes and split, e.g. at evaluation).
    """
    key = (
        os.path.abspath(json_file),
        os.path.abspath(image_root),
        tuple(str(n) for n in novel_classes),
    )
    if name in DatasetCatalog.list():
        if _REGISTERED.get(name) == key:
            return
        raise ValueError(
            f"Dataset '{name}' is already registered"
            + (f" from '{_REGISTERED[name][0]}'" if name in _REGISTERED else "")
            + f"; cannot register it again from '{json_file}'"
            + (f" with novel classes {list(novel_classes)}" if novel_classes else "")
            + ". Choose another name."
        )
    api = load_lvis_api(json_file)
    issues = build_records(api, json_file, image_root, check_images=check_images)[1]
    meta = _category_metadata(api, json_file, train_image_count)
    eval_json = _evaluation_json(name, json_file, api, issues, meta["class_frequency"])
    annotated = {
        meta["thing_dataset_id_to_contiguous_id"][a["category_id"]] for a in api.anns.values()
    }
    novel = _novel_ids(
        novel_classes, meta["thing_classes"], annotated, json_file, f"novel classes of '{name}'"
    )
    if novel:
        meta["image_count_per_class"] = [
            0 if i in novel else n for i, n in enumerate(meta["image_count_per_class"])
        ]
    meta.update(
        novel_class_ids=novel,
        json_file=eval_json,
        source_json_file=os.path.abspath(json_file),
        image_root=image_root,
        evaluator_type="lvis",
    )
    meta.update(metadata or {})

    def load():
        records = load_lvis_format_json(json_file, image_root, name)
        return _without_novel(records, novel, name) if novel else records

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(**meta)
    _REGISTERED[name] = key
    logger.info(
        f"Registered dataset '{name}': {len(api.imgs)} images, "
        f"{len(meta['thing_classes'])} categories ({len(novel)} novel) from {json_file}"
    )
