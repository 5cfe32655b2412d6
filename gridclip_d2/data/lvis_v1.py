"""LVIS v1 for open-vocabulary detection: our metadata on Detectron2's built-in LVIS v1 data sets
and the base training split ``lvis_v1_train_base`` (LVIS v1 train without the rare categories'
annotations; the rare categories are the novel ones at test time).

Layout under ``$DETECTRON2_DATASETS`` (default ``datasets``), as Detectron2 documents it::

    coco/train2017/, coco/val2017/        COCO 2017 images (LVIS v1 uses them)
    lvis/lvis_v1_train.json, lvis/lvis_v1_val.json
    lvis/lvis_v1_train_base.json          datasets/prepare_lvis_base.py
    lvis/lvis_v1_train_cat_info.json      datasets/prepare_lvis_base.py: per-category counts

Metadata (contiguous class i is LVIS category id i + 1, as in Detectron2):

- ``class_frequency``: r/c/f from Detectron2's ``LVIS_V1_CATEGORIES``.
- ``image_count_per_class``: images annotated with the class in the training json (not upstream
  Detectron2's ``class_image_count``, a list of ``{id, image_count}`` dicts that newer versions set
  on the built-in LVIS names and that Detectron2's metadata refuses to overwrite) (LVIS v1 train
  for ``lvis_v1_train`` and ``lvis_v1_val``; the base json, so 0 for rare classes, for
  ``lvis_v1_train_base``). Detectron2 v0.6's tables carry no counts, so they are read from
  ``lvis_v1_train_cat_info.json``; without it ``lvis_v1_train_base`` gets them when it is loaded
  and the other names go without.
- ``novel_class_ids``: the 337 rare classes for ``lvis_v1_train_base``, [] for the others.
"""

import json
import logging
import os
from collections import Counter
from typing import List

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.lvis import get_lvis_instances_meta, load_lvis_json
from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES

from .lvis_stats import FREQUENCIES, images_per_category

__all__ = [
    "BASE_JSON",
    "CAT_INFO_JSON",
    "lvis_v1_class_frequency",
    "lvis_v1_rare_class_ids",
    "category_info",
    "make_base_split",
    "register_lvis_v1_open_vocab",
]

logger = logging.getLogger(__name__)

# Paths relative to the data sets' root.
BASE_JSON = "lvis/lvis_v1_train_base.json"
CAT_INFO_JSON = "lvis/lvis_v1_train_cat_info.json"
_BUILTIN = ("lvis_v1_train", "lvis_v1_val", "lvis_v1_test_dev", "lvis_v1_test_challenge")


def lvis_v1_class_frequency() -> List[str]:
    """r/c/f of the 1203 LVIS v1 classes in contiguous-id order."""
    return [c["frequency"] for c in sorted(LVIS_CATEGORIES, key=lambda c: c["id"])]


def lvis_v1_rare_class_ids() -> List[int]:
    """Contiguous ids of the LVIS v1 rare classes (the novel set of the base split)."""
    return [i for i, f in enumerate(lvis_v1_class_frequency()) if f == "r"]


def category_info(dataset: dict) -> List[dict]:
    """Per category of an LVIS-format dict (in id order): id, name, frequency, and image_count /
    instance_count counted from its annotations."""
    annotations = dataset["annotations"]
    images = images_per_category((a["category_id"], a["image_id"]) for a in annotations)
    instances = Counter(a["category_id"] for a in annotations)
    return [
        {
            "id": c["id"],
            "name": c["name"],
            "frequency": c.get("frequency"),
            "image_count": images.get(c["id"], 0),
            "instance_count": instances[c["id"]],
        }
        for c in sorted(dataset["categories"], key=lambda c: c["id"])
    ]


def make_base_split(dataset: dict, source: str = "the json", novel_ids=None) -> dict:
    """The base split of an LVIS-format dict: every annotation of a novel category removed, and
    novel ids dropped from the images' ``neg_category_ids`` and ``not_exhaustive_category_ids`` (no
    information about novel classes is left). Novel categories are ``novel_ids`` (json category ids)
    or, when None, the rare ones (``frequency`` 'r' in its ``categories``: LVIS's base split). All
    categories stay, so class ids line up with the full vocabulary; their ``image_count`` and
    ``instance_count`` are recounted, their ``frequency`` kept. ``dataset`` is not modified."""
    for cat in dataset["categories"]:
        if cat.get("frequency") not in FREQUENCIES:
            raise ValueError(
                f"{source}: category {cat.get('id')} has frequency "
                f"{cat.get('frequency')!r}; expected r, c or f"
            )
    if novel_ids is None:
        rare = {c["id"] for c in dataset["categories"] if c["frequency"] == "r"}
    else:
        rare = set(novel_ids)
        unknown = rare - {c["id"] for c in dataset["categories"]}
        if unknown:
            raise ValueError(f"{source}: novel category ids {sorted(unknown)} are not categories")
    out = dict(dataset)  # same keys, in the same order
    out["annotations"] = [a for a in dataset["annotations"] if a["category_id"] not in rare]
    out["images"] = [
        dict(
            img,
            **{
                k: [c for c in img.get(k, []) if c not in rare]
                for k in ("neg_category_ids", "not_exhaustive_category_ids")
            },
        )
        for img in dataset["images"]
    ]
    counts = {c["id"]: c for c in category_info(out)}
    out["categories"] = [
        dict(
            cat,
            image_count=counts[cat["id"]]["image_count"],
            instance_count=counts[cat["id"]]["instance_count"],
        )
        for cat in dataset["categories"]
    ]
    return out


def _read_cat_info(path: str):
    """Image counts in contiguous order from a cat-info file; None (with a warning when the file is
    unusable) otherwise. Importing the package must not fail over a data set that is not in use."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            info = sorted(json.load(f), key=lambda c: c["id"])
        if [c["id"] for c in info] != list(range(1, len(LVIS_CATEGORIES) + 1)):
            raise ValueError(f"it does not list the {len(LVIS_CATEGORIES)} LVIS v1 category ids")
        return [int(c["image_count"]) for c in info]
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning(
            f"Ignoring '{path}' ({type(e).__name__}: {e}); LVIS v1 data sets get no "
            "image_count_per_class. Rewrite it with datasets/prepare_lvis_base.py"
        )
        return None


def _load_base(json_file: str, image_root: str, name: str):
    if not os.path.isfile(json_file):
        raise FileNotFoundError(
            f"'{json_file}' of dataset '{name}' does not exist: make it with "
            "`python datasets/prepare_lvis_base.py` (see datasets/README.md)"
        )
    records = load_lvis_json(json_file, image_root)  # ids 1..1203 -> 0..1202
    meta = MetadataCatalog.get(name)
    if meta.get("image_count_per_class") is None:
        images = images_per_category(
            (obj["category_id"], r["image_id"]) for r in records for obj in r["annotations"]
        )
        meta.set(image_count_per_class=[images.get(i, 0) for i in range(len(LVIS_CATEGORIES))])
    return records


def register_lvis_v1_open_vocab(root: str, base_name: str = "lvis_v1_train_base") -> None:
    """Add our metadata to Detectron2's built-in LVIS v1 names and register ``base_name`` from
    ``root/BASE_JSON`` with images under ``root/coco/`` (Detectron2's LVIS layout)."""
    frequency = lvis_v1_class_frequency()
    image_count = _read_cat_info(os.path.join(root, CAT_INFO_JSON))
    extra = {"image_count_per_class": image_count} if image_count is not None else {}
    for name in _BUILTIN:
        if name in DatasetCatalog.list():
            MetadataCatalog.get(name).set(class_frequency=frequency, novel_class_ids=[], **extra)

    rare = lvis_v1_rare_class_ids()
    if image_count is not None:
        rare_set = set(rare)
        base_count = [0 if i in rare_set else n for i, n in enumerate(image_count)]
        extra = {"image_count_per_class": base_count}
    json_file = os.path.join(root, BASE_JSON)
    image_root = os.path.join(root, "coco/")  # load_lvis_json appends the split folder to it
    DatasetCatalog.register(base_name, lambda: _load_base(json_file, image_root, base_name))
    MetadataCatalog.get(base_name).set(
        json_file=json_file,
        image_root=image_root,
        evaluator_type="lvis",
        class_frequency=frequency,
        novel_class_ids=rare,
        **get_lvis_instances_meta("lvis_v1"),
        **extra,
    )


register_lvis_v1_open_vocab(os.getenv("DETECTRON2_DATASETS", "datasets"))
