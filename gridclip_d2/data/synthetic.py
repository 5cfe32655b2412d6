"""The embedded default data set: coloured shapes in LVIS format, made on first use.

``SYNTHETIC_CATEGORIES`` has the layout of Detectron2's ``LVIS_CATEGORIES`` (1-based ``id``,
``name``, ``synonyms``, ``def``, ``frequency``) plus the train split's ``image_count`` and
``instance_count``. Frequencies follow LVIS's rule on the train split (r: fewer than 10 images,
c: 10-99, f: 100 or more); the generator asserts that the table matches what it drew.

Files, under ``$DETECTRON2_DATASETS/synthetic`` (default ``datasets/synthetic``)::

    train/000001.jpg ...                  240 images, image ids 1..240
    val/100001.jpg ...                    64 images, image ids 100001..100064
    annotations/synthetic_{train,val}.json
    STAMP                                 format version and image counts

The set is written into a temporary folder and renamed into place, so a folder with a valid
``STAMP`` is complete; any other folder at that path is regenerated. Generation is deterministic
(numpy ``RandomState`` seeded per split and per image) and takes a few seconds.

Images are RGB JPEGs of 224-288 px per side: muted backgrounds (gradients, smooth noise, stripes,
checkers) with 1-8 saturated shapes each (3 on average), circumradius 12-48 px, overlapping
little. Boxes are XYWH, tight around the drawn pixels; ``segmentation`` is the box polygon (the
detector has no mask head).
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
from PIL import Image, ImageDraw

from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = [
    "SYNTHETIC_CATEGORIES",
    "SYNTHETIC_SPLITS",
    "synthetic_dir",
    "generate_synthetic_dataset",
    "ensure_synthetic_dataset",
    "load_synthetic",
    "register_synthetic",
]

logger = logging.getLogger(__name__)

# Bump when the generator's output changes: older sets on disk are then regenerated.
SYNTHETIC_VERSION = "1"

# name (colour_shape), synonym, RGB colour, definition, presence: the fraction of images holding
# the category, or (rare ones) the exact number of images per split.
_SPEC = (
    ("red_circle", "red_disc", (220, 30, 30), "a filled red disk", 0.55),
    ("green_square", "green_tile", (30, 170, 50), "a filled green square, nearly upright", 0.5),
    ("blue_triangle", "blue_trigon", (40, 70, 230),
     "a filled blue triangle pointing roughly upwards", 0.5),
    ("yellow_star", "yellow_pentagram", (245, 215, 20), "a filled yellow five-pointed star", 0.25),
    ("magenta_ring", "magenta_hoop", (215, 40, 200),
     "a magenta ring with a round hole in the middle", 0.2),
    ("orange_cross", "orange_plus_sign", (250, 130, 10),
     "a filled orange plus-shaped cross with four equal arms", 0.15),
    ("cyan_diamond", "cyan_rhombus", (20, 210, 215),
     "a filled cyan rhombus, taller than it is wide", 7),
    ("purple_hexagon", "purple_hex", (120, 40, 190),
     "a filled purple regular six-sided polygon", 5),
)
# frequency, image_count, instance_count of the train split as generated (the generator checks it)
_TRAIN_COUNTS = (("f", 136, 170), ("f", 118, 160), ("f", 138, 186), ("c", 44, 53), ("c", 49, 63),
                 ("c", 39, 52), ("r", 7, 10), ("r", 5, 6))
SYNTHETIC_CATEGORIES: List[dict] = [
    {"id": k + 1, "name": name, "synonyms": [name, synonym], "def": definition,
     "frequency": freq, "image_count": images, "instance_count": instances}
    for k, ((name, synonym, _, definition, _), (freq, images, instances))
    in enumerate(zip(_SPEC, _TRAIN_COUNTS))
]

# split -> (number of images, first image id, seed)
SYNTHETIC_SPLITS: Dict[str, Tuple[int, int, int]] = {
    "train": (240, 1, 20230316),
    "val": (64, 100001, 20230317),
}
_IMAGE_SIZES = ((256, 256), (224, 288), (288, 224))  # (height, width)
_RADIUS_RANGE = (12.0, 48.0)  # circumradius in px, drawn log-uniformly
_MAX_OVERLAP = 0.15  # intersection / smaller circumscribing square
_JPEG_QUALITY = 92


# ------------------------------------------------------------------------------------ drawing
def _polygon(shape: str, cx: float, cy: float, r: float, rng) -> List[Tuple[float, float]]:
    """Vertices of a polygonal shape of circumradius ``r`` centred at (cx, cy), randomly turned."""
    if shape == "square":
        angles, radii = np.deg2rad(45 + 90 * np.arange(4) + rng.uniform(-15, 15)), [r] * 4
    elif shape == "triangle":
        angles, radii = np.deg2rad(-90 + 120 * np.arange(3) + rng.uniform(-20, 20)), [r] * 3
    elif shape == "star":
        angles = np.deg2rad(-90 + 36 * np.arange(10) + rng.uniform(-36, 36))
        radii = [r, 0.45 * r] * 5
    elif shape == "hexagon":
        angles, radii = np.deg2rad(60 * np.arange(6) + rng.uniform(0, 60)), [r] * 6
    elif shape == "diamond":
        # rhombus: tall axis r, short axis 0.6 r
        pts = np.array([(0, -r), (0.6 * r, 0), (0, r), (-0.6 * r, 0)])
        return _turn(pts, rng.uniform(-10, 10), cx, cy)
    elif shape == "cross":
        a = 0.3 * r  # half width of an arm
        s = r / np.sqrt(1 + 0.09)  # arm length so that the corners lie on the circumcircle
        pts = np.array([(-a, -s), (a, -s), (a, -a), (s, -a), (s, a), (a, a),
                        (a, s), (-a, s), (-a, a), (-s, a), (-s, -a), (-a, -a)])
        return _turn(pts, rng.uniform(-20, 20), cx, cy)
    else:
        raise ValueError(f"Unknown synthetic shape '{shape}'")
    radii = np.asarray(radii)
    return list(zip(cx + radii * np.cos(angles), cy + radii * np.sin(angles)))


def _turn(pts: np.ndarray, degrees: float, cx: float, cy: float) -> List[Tuple[float, float]]:
    t = np.deg2rad(degrees)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    pts = pts @ rot.T + (cx, cy)
    return [tuple(p) for p in pts]


def _shape_mask(shape: str, cx: float, cy: float, r: float, width: int, height: int, rng):
    """H x W bool mask of one shape."""
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    if shape in ("circle", "ring"):
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        if shape == "ring":
            ri = 0.55 * r
            draw.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, rng), fill=255)
    return np.asarray(mask) > 0


def _muted_colour(rng) -> np.ndarray:
    return rng.uniform(70, 190) + rng.uniform(-25, 25, size=3)


def _background(height: int, width: int, rng) -> np.ndarray:
    """H x W x 3 float background: gradient, smooth noise, stripes or checkers, in muted colours."""
    kind = rng.randint(4)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    c1, c2 = _muted_colour(rng), _muted_colour(rng)
    if kind == 0:  # linear gradient at a random angle
        t = rng.uniform(0, 2 * np.pi)
        proj = xs * np.cos(t) + ys * np.sin(t)
        w = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
    elif kind == 1:  # smooth noise: a coarse random grid upsampled bicubically
        cell = rng.randint(16, 48)
        coarse = rng.uniform(0, 255, size=(height // cell + 2, width // cell + 2)).astype(np.uint8)
        w = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC)) / 255.0
    elif kind == 2:  # stripes
        t, period = rng.uniform(0, np.pi), rng.uniform(8, 32)
        w = 0.5 + 0.5 * np.sin(2 * np.pi * (xs * np.cos(t) + ys * np.sin(t)) / period)
    else:  # checkers
        cell = rng.randint(8, 33)
        w = ((xs // cell + ys // cell) % 2).astype(np.float32)
    w = np.asarray(w, dtype=np.float32)[..., None]
    return c1 * (1 - w) + c2 * w


def _render_image(height, width, cat_ids, rng):
    """Draw the categories ``cat_ids`` (one entry per instance). Returns HWC uint8 RGB and the
    placed objects as (category id, [x, y, w, h])."""
    image = _background(height, width, rng)
    placed, squares = [], []
    for cat_id in cat_ids:
        name, _, colour, _, _ = _SPEC[cat_id - 1]
        shape = name.split("_")[1]
        for _ in range(50):
            r = float(np.exp(rng.uniform(*np.log(_RADIUS_RANGE))))
            cx, cy = rng.uniform(r + 1, width - r - 1), rng.uniform(r + 1, height - r - 1)
            sq = np.array([cx - r, cy - r, cx + r, cy + r])
            if all(_overlap(sq, other) <= _MAX_OVERLAP for other in squares):
                break
        else:
            continue  # no room left in this image: the instance is dropped
        mask = _shape_mask(shape, cx, cy, r, width, height, rng)
        fill = np.clip(np.asarray(colour) + rng.uniform(-20, 20, size=3), 0, 255)
        image[mask] = fill
        ys, xs = np.nonzero(mask)
        x0, y0 = int(xs.min()), int(ys.min())
        box = [float(x0), float(y0), float(xs.max() + 1 - x0), float(ys.max() + 1 - y0)]
        placed.append((cat_id, box))
        squares.append(sq)
    image = image + rng.normal(0, rng.uniform(3, 9), size=image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), placed


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return iw * ih / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


# ------------------------------------------------------------------------------------ the set
def _instances_per_image(num_images: int, rng) -> List[List[int]]:
    """Category id of every instance to draw, per image; rare categories first (never dropped)."""
    present = np.zeros((num_images, len(_SPEC)), dtype=bool)
    presences = [spec[4] for spec in _SPEC]
    for k, presence in enumerate(presences):
        if isinstance(presence, int):
            present[rng.choice(num_images, presence, replace=False), k] = True
        else:
            present[:, k] = rng.uniform(size=num_images) < presence
    frequent = [k for k, p in enumerate(presences) if not isinstance(p, int) and p >= 0.5]
    order = sorted(range(len(_SPEC)), key=lambda k: (not isinstance(presences[k], int), k))
    out = []
    for i in range(num_images):
        if not present[i].any():
            present[i, frequent[rng.randint(len(frequent))]] = True
        ids = []
        for k in order:
            if present[i, k]:
                ids += [k + 1] * (1 + int(rng.uniform() < 0.3))
        out.append(ids)
    return out


def _frequency(image_count: int) -> str:
    return "r" if image_count < 10 else ("c" if image_count < 100 else "f")


def _write_split(out_dir: str, split: str) -> Dict[int, Tuple[int, int]]:
    """Write one split's images and json; returns category id -> (image count, instance count)."""
    num_images, first_id, seed = SYNTHETIC_SPLITS[split]
    rng = np.random.RandomState(seed)
    os.makedirs(os.path.join(out_dir, split), exist_ok=True)
    images, annotations = [], []
    image_counts, instance_counts = Counter(), Counter()
    for i, cat_ids in enumerate(_instances_per_image(num_images, rng)):
        image_rng = np.random.RandomState([seed, i])
        height, width = _IMAGE_SIZES[image_rng.randint(len(_IMAGE_SIZES))]
        pixels, objects = _render_image(height, width, cat_ids, image_rng)
        image_id = first_id + i
        file_name = f"{split}/{image_id:06d}.jpg"
        Image.fromarray(pixels).save(os.path.join(out_dir, file_name), quality=_JPEG_QUALITY)
        present = {c for c, _ in objects}
        image_counts.update(present)
        images.append({
            "id": image_id,
            "file_name": file_name,
            "coco_url": f"https://synthetic.invalid/{file_name}",
            "height": height,
            "width": width,
            "neg_category_ids": [c for c in range(1, len(_SPEC) + 1) if c not in present],
            "not_exhaustive_category_ids": [],
        })
        for cat_id, (x, y, w, h) in objects:
            instance_counts[cat_id] += 1
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": cat_id,
                "bbox": [x, y, w, h],
                "area": w * h,
                "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
            })
    counts = {c: (image_counts[c], instance_counts[c]) for c in range(1, len(_SPEC) + 1)}
    categories = [dict(cat, image_count=counts[cat["id"]][0], instance_count=counts[cat["id"]][1])
                  for cat in SYNTHETIC_CATEGORIES]
    data = {
        "info": {"description": f"gridclip_d2 synthetic shapes, {split} split",
                 "version": SYNTHETIC_VERSION},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    with open(os.path.join(out_dir, "annotations", f"synthetic_{split}.json"), "w") as f:
        json.dump(data, f)
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
            if drawn != expected or _frequency(drawn[0]) != cat["frequency"]:
                raise RuntimeError(
                    f"Synthetic generator drew (images, instances) = {drawn} for '{cat['name']}' "
                    f"but SYNTHETIC_CATEGORIES says {expected}, frequency '{cat['frequency']}'"
                )
    stamp = {"version": SYNTHETIC_VERSION,
             "num_images": {s: n for s, (n, _, _) in SYNTHETIC_SPLITS.items()}}
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
    from .register import load_lvis_format_json

    if split not in SYNTHETIC_SPLITS:
        raise KeyError(f"Unknown synthetic split '{split}'; choose from {list(SYNTHETIC_SPLITS)}")
    root = ensure_synthetic_dataset(datasets_root)
    json_file = os.path.join(root, "annotations", f"synthetic_{split}.json")
    return load_lvis_format_json(json_file, root)


def register_synthetic(datasets_root: str = None, prefix: str = "synthetic") -> None:
    """Register ``<prefix>_train`` and ``<prefix>_val`` (lazy: generated on first load)."""
    datasets_root = os.path.abspath(datasets_root or os.getenv("DETECTRON2_DATASETS", "datasets"))
    root = synthetic_dir(datasets_root)
    cats = sorted(SYNTHETIC_CATEGORIES, key=lambda c: c["id"])
    for split in SYNTHETIC_SPLITS:
        name = f"{prefix}_{split}"
        DatasetCatalog.register(name, functools.partial(load_synthetic, split, datasets_root))
        MetadataCatalog.get(name).set(
            thing_classes=[c["name"] for c in cats],
            thing_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(cats)},
            class_frequency=[c["frequency"] for c in cats],
            class_image_count=[c["image_count"] for c in cats],
            novel_class_ids=[],
            json_file=os.path.join(root, "annotations", f"synthetic_{split}.json"),
            image_root=root,
            evaluator_type="lvis",
        )


register_synthetic()
