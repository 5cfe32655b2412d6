"""The embedded default data set: an open-vocabulary world of coloured shapes in LVIS format.

30 categories named in plain words, a colour and a shape ("red circle", "blue cross"; see
:mod:`.synthetic_shapes`), in three groups (``SYNTHETIC_CLASS_GROUPS``):

* **base** (18): their boxes are the training data, with long-tailed frequencies (two rare ones,
  8 training images each);
* **novel-compositional** (6): a colour and a shape that base categories show separately ("blue
  square": "blue triangle" and "red square" are base). A text tower that composes words names them
  without any image-level help: the control group;
* **novel-concept** (6): a colour or a shape that no base category has, "pink" or "star" ("pink
  circle", "blue star"). Only the small CLIP's caption pairs name them, so what the detector knows
  of them comes from CLIP.

Both novel groups appear in the training images, but their boxes are removed from the training json
exactly as LVIS's base split removes the rare categories' annotations (``make_base_split``, the
same function ``datasets/prepare_lvis_base.py`` runs on LVIS). Validation and test keep every box.

Three splits, drawn with their own seeds: ``train`` (base boxes only), ``val`` (every choice of
weights, thresholds, regions and pretraining settings is made on it) and ``test`` (held out: the
reported numbers).

``SYNTHETIC_CATEGORIES`` has the layout of Detectron2's ``LVIS_CATEGORIES`` (1-based ``id``,
``name``, ``synonyms``, ``def``, ``frequency``) plus ``novel``, ``group`` and the full train split's
``image_count`` and ``instance_count`` (before the novel boxes are removed). Frequencies follow
LVIS's rule on the full train split (r: fewer than 10 images, c: 10-99, f: 100 or more); the
generator asserts that the table matches what it drew.

Files, under ``$DETECTRON2_DATASETS/synthetic`` (default ``datasets/synthetic``)::

    train/000001.jpg ...                  600 images, image ids 1..600
    val/100001.jpg ...                    150 images, image ids 100001..100150
    test/200001.jpg ...                   300 images, image ids 200001..200300
    annotations/synthetic_train_full.json every box (as lvis_v1_train.json)
    annotations/synthetic_train.json      the base split: novel boxes removed (registered)
    annotations/synthetic_val.json        every box, every category
    annotations/synthetic_test.json       every box, every category
    STAMP                                 format version and image counts

Metadata of ``synthetic_train`` / ``synthetic_val`` / ``synthetic_test``: ``novel_class_ids``
(contiguous ids of the twelve novel categories, on the training set as on LVIS's base split),
``class_groups`` (group name -> contiguous ids, every split), ``class_frequency``,
``image_count_per_class`` (of the base split: 0 for novel classes).

The set is written into a temporary folder and renamed into place, so a folder with a valid
``STAMP`` is complete; any other folder at that path is regenerated. Generation is deterministic
(numpy ``RandomState`` seeded per split and per image) and takes a few seconds.

Images are RGB JPEGs of 224-288 px per side: muted backgrounds with 1-17 saturated shapes each
(about 5 on average), circumradius 12-48 px, overlapping little. Boxes are XYWH, tight around the
drawn pixels; ``segmentation`` is the box polygon (the detector has no mask head).
Every image is exhaustively annotated: ``neg_category_ids`` lists every category absent from it.
"""

import contextlib
import functools
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections import Counter
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..atomic_write import atomic_json_dump
from ..vocabulary import SYNTHETIC_CONCEPT_NAMES
from .lvis_stats import images_per_category, lvis_frequency
from .lvis_v1 import make_base_split
from .synthetic_shapes import CATEGORY_NAMES, category_index, render_objects

__all__ = [
    "SYNTHETIC_CATEGORIES",
    "SYNTHETIC_NOVEL_CLASS_IDS",
    "SYNTHETIC_CLASS_GROUPS",
    "SYNTHETIC_SPLITS",
    "synthetic_dir",
    "generate_synthetic_dataset",
    "ensure_synthetic_dataset",
    "load_synthetic",
    "register_synthetic",
]

logger = logging.getLogger(__name__)

# Bump when the generator's output changes: older sets on disk are then regenerated.
SYNTHETIC_VERSION = "3"

# Novel-compositional categories: every colour once, every shape at least once, so each name
# combines a colour and a shape that base categories show separately.
_COMPOSITIONAL = (
    "red triangle",
    "green cross",
    "blue square",
    "yellow circle",
    "purple cross",
    "orange square",
)
# Novel-concept categories: "pink" or "star", which no base category shows.
_CONCEPT = SYNTHETIC_CONCEPT_NAMES
_NOVEL = _COMPOSITIONAL + _CONCEPT
# Base categories that are rare (an exact number of images per split).
_RARE = {"purple triangle": 8, "orange cross": 8}
_NOVEL_PRESENCE = 0.12  # fraction of images holding each novel category


def _presence() -> List[float]:
    """Per category: the fraction of images holding it, or (rare ones) the exact image count."""
    base = [n for n in CATEGORY_NAMES if n not in _NOVEL and n not in _RARE]
    # long tail over the other base categories, 0.30 of the images down to 0.05 geometrically, in
    # a fixed shuffled order so that frequency does not follow colour or shape
    base = [base[i] for i in np.random.RandomState(0).permutation(len(base))]
    tail = {n: round(0.30 * (0.05 / 0.30) ** (i / (len(base) - 1)), 4) for i, n in enumerate(base)}
    return [
        _RARE[n] if n in _RARE else (_NOVEL_PRESENCE if n in _NOVEL else tail[n])
        for n in CATEGORY_NAMES
    ]


_PRESENCE = _presence()
# frequency, image_count, instance_count of the full train split as generated (the generator
# checks it)
_TRAIN_COUNTS = (
    ("c", 48, 63),  # red circle
    ("f", 163, 220),  # red square
    ("c", 70, 94),  # red triangle (novel-compositional)
    ("c", 91, 116),  # red cross
    ("c", 46, 60),  # green circle
    ("f", 102, 130),  # green square
    ("c", 31, 38),  # green triangle
    ("c", 77, 101),  # green cross (novel-compositional)
    ("f", 175, 224),  # blue circle
    ("c", 68, 87),  # blue square (novel-compositional)
    ("c", 54, 76),  # blue triangle
    ("f", 159, 193),  # blue cross
    ("c", 80, 103),  # yellow circle (novel-compositional)
    ("f", 130, 165),  # yellow square
    ("c", 73, 94),  # yellow triangle
    ("c", 46, 61),  # yellow cross
    ("c", 35, 47),  # purple circle
    ("f", 118, 147),  # purple square
    ("r", 8, 10),  # purple triangle
    ("c", 76, 98),  # purple cross (novel-compositional)
    ("c", 72, 99),  # orange circle
    ("c", 65, 86),  # orange square (novel-compositional)
    ("c", 60, 74),  # orange triangle
    ("r", 8, 11),  # orange cross
    ("c", 83, 110),  # pink circle (novel-concept)
    ("c", 61, 75),  # pink square (novel-concept)
    ("c", 87, 110),  # pink cross (novel-concept)
    ("c", 78, 105),  # green star (novel-concept)
    ("c", 74, 92),  # blue star (novel-concept)
    ("c", 61, 81),  # orange star (novel-concept)
)
SYNTHETIC_NOVEL_CLASS_IDS: List[int] = sorted(category_index(n) for n in _NOVEL)
# group -> contiguous ids (the evaluation reports AP per group)
SYNTHETIC_CLASS_GROUPS: Dict[str, List[int]] = {
    "base": [k for k in range(len(CATEGORY_NAMES)) if CATEGORY_NAMES[k] not in _NOVEL],
    "novel-compositional": sorted(category_index(n) for n in _COMPOSITIONAL),
    "novel-concept": sorted(category_index(n) for n in _CONCEPT),
}


def _group(k: int) -> str:
    return next(g for g, ids in SYNTHETIC_CLASS_GROUPS.items() if k in ids)


def _categories(counts) -> List[dict]:
    return [
        {
            "id": k + 1,
            "name": name,
            "synonyms": [name],
            "def": f"a {name} drawn on a plain background",
            "frequency": freq,
            "image_count": images,
            "instance_count": instances,
            "novel": k in SYNTHETIC_NOVEL_CLASS_IDS,
            "group": _group(k),
        }
        for k, (name, (freq, images, instances)) in enumerate(zip(CATEGORY_NAMES, counts))
    ]


SYNTHETIC_CATEGORIES: List[dict] = _categories(_TRAIN_COUNTS)

# split -> (number of images, first image id, seed)
SYNTHETIC_SPLITS: Dict[str, Tuple[int, int, int]] = {
    "train": (600, 1, 20230316),
    "val": (150, 100001, 20230317),
    "test": (300, 200001, 20261206),
}
_IMAGE_SIZES = ((256, 256), (224, 288), (288, 224))  # (height, width)
_RADIUS_RANGE = (12.0, 48.0)  # circumradius in px, drawn log-uniformly
_JPEG_QUALITY = 92


def _instances_per_image(num_images: int, rng) -> List[List[int]]:
    """Category index of every instance to draw, per image; rare categories first (never
    dropped)."""
    num = len(CATEGORY_NAMES)
    present = np.zeros((num_images, num), dtype=bool)
    for k, presence in enumerate(_PRESENCE):
        if isinstance(presence, int):
            present[rng.choice(num_images, presence, replace=False), k] = True
        else:
            present[:, k] = rng.uniform(size=num_images) < presence
    frequent = [k for k, p in enumerate(_PRESENCE) if not isinstance(p, int) and p >= 0.2]
    order = sorted(range(num), key=lambda k: (not isinstance(_PRESENCE[k], int), k))
    out = []
    for i in range(num_images):
        if not present[i].any():
            present[i, frequent[rng.randint(len(frequent))]] = True
        ids = []
        for k in order:
            if present[i, k]:
                ids += [k] * (1 + int(rng.uniform() < 0.3))
        out.append(ids)
    return out


def _write_split(out_dir: str, split: str) -> Dict[int, Tuple[int, int]]:
    """Write one split's images and json(s); returns category id -> (image count, instance count)
    of every drawn box."""
    num_images, first_id, seed = SYNTHETIC_SPLITS[split]
    rng = np.random.RandomState(seed)
    os.makedirs(os.path.join(out_dir, split), exist_ok=True)
    num_cats = len(CATEGORY_NAMES)
    images, annotations = [], []
    for i, cats in enumerate(_instances_per_image(num_images, rng)):
        image_rng = np.random.RandomState([seed, i])
        height, width = _IMAGE_SIZES[image_rng.randint(len(_IMAGE_SIZES))]
        pixels, objects = render_objects(height, width, cats, image_rng, _RADIUS_RANGE)
        image_id = first_id + i
        file_name = f"{split}/{image_id:06d}.jpg"
        Image.fromarray(pixels).save(os.path.join(out_dir, file_name), quality=_JPEG_QUALITY)
        present = {k + 1 for k, _ in objects}
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "coco_url": f"https://synthetic.invalid/{file_name}",
                "height": height,
                "width": width,
                "neg_category_ids": [c for c in range(1, num_cats + 1) if c not in present],
                "not_exhaustive_category_ids": [],
            }
        )
        for k, (x, y, w, h) in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": k + 1,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                }
            )
    image_counts = images_per_category((a["category_id"], a["image_id"]) for a in annotations)
    instance_counts = Counter(a["category_id"] for a in annotations)
    counts = {c: (image_counts.get(c, 0), instance_counts[c]) for c in range(1, num_cats + 1)}
    categories = [
        {k: v for k, v in cat.items() if k not in ("novel", "group")}
        | {
            "image_count": counts[cat["id"]][0],
            "instance_count": counts[cat["id"]][1],
            "frequency": lvis_frequency(counts[cat["id"]][0])
            if split == "train"
            else cat["frequency"],
        }
        for cat in SYNTHETIC_CATEGORIES
    ]
    data = {
        "info": {
            "description": f"gridclip_d2 synthetic shapes, {split} split",
            "version": SYNTHETIC_VERSION,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    ann_dir = os.path.join(out_dir, "annotations")
    os.makedirs(ann_dir, exist_ok=True)
    if split == "train":
        atomic_json_dump(data, os.path.join(ann_dir, "synthetic_train_full.json"))
        novel_ids = [k + 1 for k in SYNTHETIC_NOVEL_CLASS_IDS]
        data = make_base_split(data, source="synthetic_train_full.json", novel_ids=novel_ids)
    atomic_json_dump(data, os.path.join(ann_dir, f"synthetic_{split}.json"))
    return counts


def generate_synthetic_dataset(out_dir: str) -> None:
    """Write the whole synthetic set into ``out_dir`` (not atomically; see
    :func:`ensure_synthetic_dataset`). Raises if the drawn counts contradict
    SYNTHETIC_CATEGORIES."""
    for split in SYNTHETIC_SPLITS:
        counts = _write_split(out_dir, split)
        if split != "train":
            continue
        for cat in SYNTHETIC_CATEGORIES:
            drawn = counts[cat["id"]]
            expected = (cat["image_count"], cat["instance_count"])
            if drawn != expected or lvis_frequency(drawn[0]) != cat["frequency"]:
                raise RuntimeError(
                    f"Synthetic generator drew (images, instances) = {drawn} for '{cat['name']}' "
                    f"but SYNTHETIC_CATEGORIES says {expected}, frequency '{cat['frequency']}'"
                )
    stamp = {
        "version": SYNTHETIC_VERSION,
        "num_images": {s: n for s, (n, _, _) in SYNTHETIC_SPLITS.items()},
    }
    with open(os.path.join(out_dir, "STAMP"), "w") as f:
        json.dump(stamp, f)


def synthetic_dir(datasets_root: str = None) -> str:
    """Folder of the synthetic set under ``datasets_root`` (default ``$DETECTRON2_DATASETS``,
    else ``datasets``)."""
    root = datasets_root or os.getenv("DETECTRON2_DATASETS", "datasets")
    return os.path.join(root, "synthetic")


def _is_complete(path: str) -> bool:
    try:
        with open(os.path.join(path, "STAMP")) as f:
            stamp = json.load(f)
        if stamp.get("version") != SYNTHETIC_VERSION:
            return False
        for split, (num_images, _, _) in SYNTHETIC_SPLITS.items():
            if stamp["num_images"][split] != num_images:
                return False
            if not os.path.isfile(os.path.join(path, "annotations", f"synthetic_{split}.json")):
                return False
            if len(os.listdir(os.path.join(path, split))) != num_images:
                return False
        return True
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def ensure_synthetic_dataset(datasets_root: str = None) -> str:
    """Make the synthetic set under ``datasets_root`` unless a complete one is there; returns its
    folder. Safe against concurrent callers (per-machine lock, then an atomic rename)."""
    target = os.path.abspath(synthetic_dir(datasets_root))
    if _is_complete(target):
        return target
    with _machine_lock(target):
        if _is_complete(target):
            return target
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = f"{target}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        logger.info(f"Generating the synthetic data set into {target} ...")
        try:
            generate_synthetic_dataset(tmp)
            if os.path.lexists(target) and not _is_complete(target):
                logger.warning(f"Removing the incomplete or outdated synthetic set at {target}")
                if os.path.isdir(target) and not os.path.islink(target):
                    shutil.rmtree(target)
                else:
                    os.remove(target)
            try:
                os.rename(tmp, target)
            except OSError:
                if not _is_complete(target):  # another machine sharing the folder did not win
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextlib.contextmanager
def _machine_lock(path: str):
    """An exclusive flock on a temp-dir file named after ``path`` (no-op where fcntl is missing:
    the atomic rename alone then guards against races)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    name = "gridclip_d2-" + path.strip(os.sep).replace(os.sep, "_") + ".lock"
    with open(os.path.join(tempfile.gettempdir(), name[-200:]), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def load_synthetic(split: str, datasets_root: str = None) -> List[dict]:
    """Dataset dicts of a synthetic split, generating the set first if needed."""
    from .lvis_format import load_lvis_format_json

    if split not in SYNTHETIC_SPLITS:
        raise KeyError(f"Unknown synthetic split '{split}'; choose from {list(SYNTHETIC_SPLITS)}")
    root = ensure_synthetic_dataset(datasets_root)
    json_file = os.path.join(root, "annotations", f"synthetic_{split}.json")
    return load_lvis_format_json(json_file, root)


def register_synthetic(datasets_root: str = None, prefix: str = "synthetic") -> None:
    """Register ``<prefix>_train`` (the base split), ``<prefix>_val`` and ``<prefix>_test`` (lazy:
    generated on first load)."""
    datasets_root = os.path.abspath(datasets_root or os.getenv("DETECTRON2_DATASETS", "datasets"))
    root = synthetic_dir(datasets_root)
    cats = sorted(SYNTHETIC_CATEGORIES, key=lambda c: c["id"])
    base_image_count = [0 if c["novel"] else c["image_count"] for c in cats]
    for split in SYNTHETIC_SPLITS:
        name = f"{prefix}_{split}"
        DatasetCatalog.register(name, functools.partial(load_synthetic, split, datasets_root))
        MetadataCatalog.get(name).set(
            thing_classes=[c["name"] for c in cats],
            thing_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(cats)},
            class_frequency=[c["frequency"] for c in cats],
            image_count_per_class=base_image_count,
            novel_class_ids=list(SYNTHETIC_NOVEL_CLASS_IDS) if split == "train" else [],
            class_groups={g: list(ids) for g, ids in SYNTHETIC_CLASS_GROUPS.items()},
            json_file=os.path.join(root, "annotations", f"synthetic_{split}.json"),
            image_root=root,
            evaluator_type="lvis",
        )


register_synthetic()
