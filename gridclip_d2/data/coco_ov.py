"""Open-vocabulary COCO: COCO 2017 with 48 base and 17 novel categories, trained on the base boxes,
scored by box AP50 on the novel, base and all 65 categories.

The split is Bansal et al., "Zero-Shot Object Detection" (ECCV 2018), as OVR-CNN (Zareian et al.,
"Open-Vocabulary Object Detection Using Captions", CVPR 2021) uses it; the names are COCO's own
(``OV_COCO_BASE_CLASSES``, ``OV_COCO_NOVEL_CLASSES``; the table is
``gridclip_d2.vocabulary.builtin``, so that a model names them without the data package).

Files under ``$DETECTRON2_DATASETS`` (default ``datasets``), Detectron2's COCO layout::

    coco/train2017/, coco/val2017/                 COCO 2017 images
    coco/annotations/instances_train2017.json      COCO 2017 (read by the prepare script only)
    coco/annotations/instances_val2017.json
    coco/annotations/ov_coco_train_base.json       datasets/prepare_ov_coco.py: base boxes only
    coco/annotations/ov_coco_val.json              datasets/prepare_ov_coco.py: the 65 categories

Both written jsons hold the 65 categories with COCO's ids (``make_ov_coco_json``). Registered data
sets (the json is read when the set is first loaded; a missing one is named with the command that
makes it): ``coco_ov_train_base`` (images ``coco/train2017``) and ``coco_ov_val``
(``coco/val2017``).
Their metadata share one class list:

- ``thing_classes``: the 65 names in COCO id order (``OV_COCO_CLASSES``);
  ``thing_dataset_id_to_contiguous_id``: COCO id -> 0..64;
- ``novel_class_ids``: the 17 novel classes' contiguous ids on the training set (left out of the
  classification loss, as on LVIS's base split), ``[]`` on the val set (it has every box);
- ``class_groups``: ``{"base": [48 ids], "novel": [17 ids]}`` on both (the groups AP50 is reported
  on); ``evaluator_type``: ``"coco_ov"`` (``gridclip_d2.engine.ov_coco_evaluator``);
  ``json_file``, ``image_root``.
"""

import functools
import logging
import os
from typing import Dict, List, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from ..vocabulary.builtin import OV_COCO_BASE_CLASSES, OV_COCO_CLASSES, OV_COCO_NOVEL_CLASSES

__all__ = [
    "OV_COCO_CLASSES",
    "OV_COCO_BASE_CLASSES",
    "OV_COCO_NOVEL_CLASSES",
    "OV_COCO_EVALUATOR_TYPE",
    "OV_COCO_SPLITS",
    "ov_coco_category_ids",
    "make_ov_coco_json",
    "register_ov_coco",
]

logger = logging.getLogger(__name__)

OV_COCO_EVALUATOR_TYPE = "coco_ov"
# split -> (data set name, COCO 2017 source json, written json, image folder), relative to the root
OV_COCO_SPLITS: Dict[str, Tuple[str, str, str, str]] = {
    "train": (
        "coco_ov_train_base",
        "coco/annotations/instances_train2017.json",
        "coco/annotations/ov_coco_train_base.json",
        "coco/train2017",
    ),
    "val": (
        "coco_ov_val",
        "coco/annotations/instances_val2017.json",
        "coco/annotations/ov_coco_val.json",
        "coco/val2017",
    ),
}
_PREPARE = "`python datasets/prepare_ov_coco.py` (see datasets/README.md)"


def ov_coco_category_ids() -> Tuple[int, ...]:
    """COCO 2017 category ids of ``OV_COCO_CLASSES`` (from Detectron2's COCO table), ascending."""
    coco = {c["name"]: c["id"] for c in COCO_CATEGORIES if c["isthing"]}
    return tuple(coco[n] for n in OV_COCO_CLASSES)


def make_ov_coco_json(dataset: dict, split: str, source: str = "the json") -> dict:
    """The open-vocabulary json of a COCO 2017 instances dict (``dataset`` is not modified).

    Both splits keep the 65 categories (COCO's entries, ids unchanged, in id order) and drop the
    boxes of the other 15. ``split`` "train": the novel categories' boxes are removed too (crowd
    boxes of base categories stay, as in COCO) and every image is kept. "val": the boxes of the 65,
    on the images that hold at least one of them (OVR-CNN's evaluation set). Raises ValueError,
    naming ``source``, when a category of the split is missing or named otherwise than in COCO 2017.
    """
    if split not in OV_COCO_SPLITS:
        raise ValueError(f"split must be one of {sorted(OV_COCO_SPLITS)}, got {split!r}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset, dict) or not isinstance(dataset.get(key), list):
            raise ValueError(f"{source} is not a COCO instances json: no '{key}' list")
    ids = dict(zip(OV_COCO_CLASSES, ov_coco_category_ids()))
    found = {c.get("id"): c for c in dataset["categories"]}
    wrong = [
        f"{name!r} (id {i}: {found[i].get('name')!r})" if i in found else f"{name!r} (id {i})"
        for name, i in ids.items()
        if found.get(i, {}).get("name") != name
    ]
    if wrong:
        raise ValueError(
            f"{source}: {len(wrong)} of the 65 open-vocabulary COCO categories are missing or "
            f"named otherwise ({', '.join(wrong[:5])}{', ...' if len(wrong) > 5 else ''}): "
            "expected a COCO 2017 instances json"
        )
    names = OV_COCO_BASE_CLASSES if split == "train" else OV_COCO_CLASSES
    boxed = {ids[n] for n in names}
    out = dict(dataset)  # same keys, in the same order
    out["categories"] = [found[i] for i in sorted(ids.values())]
    out["annotations"] = [a for a in dataset["annotations"] if a["category_id"] in boxed]
    if split == "val":
        holding = {a["image_id"] for a in out["annotations"]}
        out["images"] = [img for img in dataset["images"] if img["id"] in holding]
    return out


def _load(json_file: str, image_root: str, name: str) -> List[dict]:
    if not os.path.isfile(json_file):
        raise FileNotFoundError(
            f"'{json_file}' of dataset '{name}' does not exist: make it with {_PREPARE}"
        )
    records = load_coco_json(json_file, image_root)  # COCO category ids, mapped below
    id_map = MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id
    for record in records:
        for obj in record["annotations"]:
            if obj["category_id"] not in id_map:
                raise ValueError(
                    f"'{json_file}' of dataset '{name}' has a box of category id "
                    f"{obj['category_id']} (image {record['image_id']}), not one of the 65 "
                    f"open-vocabulary COCO categories: make the json with {_PREPARE}"
                )
            obj["category_id"] = id_map[obj["category_id"]]
    return records


def register_ov_coco(root: str) -> None:
    """Register ``coco_ov_train_base`` and ``coco_ov_val`` with their jsons and images under
    ``root`` (see the module docstring)."""
    id_map = {cat_id: i for i, cat_id in enumerate(ov_coco_category_ids())}
    groups = {
        "base": [OV_COCO_CLASSES.index(n) for n in OV_COCO_BASE_CLASSES],
        "novel": [OV_COCO_CLASSES.index(n) for n in OV_COCO_NOVEL_CLASSES],
    }
    for split, (name, _, json_name, images) in OV_COCO_SPLITS.items():
        json_file, image_root = os.path.join(root, json_name), os.path.join(root, images)
        DatasetCatalog.register(name, functools.partial(_load, json_file, image_root, name))
        MetadataCatalog.get(name).set(
            thing_classes=list(OV_COCO_CLASSES),
            thing_dataset_id_to_contiguous_id=id_map,
            novel_class_ids=list(groups["novel"]) if split == "train" else [],
            class_groups={g: list(ids) for g, ids in groups.items()},
            json_file=json_file,
            image_root=image_root,
            evaluator_type=OV_COCO_EVALUATOR_TYPE,
        )


register_ov_coco(os.getenv("DETECTRON2_DATASETS", "datasets"))
