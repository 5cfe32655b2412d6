"""Image-caption pairs of the synthetic world: the small CLIP's pretraining data.

As CLIP's data is not the detector's, these are separate images of the same world, any of the 30
categories of :mod:`.synthetic_shapes` (base and novel alike: web captions name what detection
boxes leave out), 96 x 96 px, of two kinds:

* object photos (``OBJECT_FRACTION`` of the pairs): a scene drawn as the detection images are
  (256 px, several objects at the same sizes), cropped around one object the way an object is
  framed for CLIP everywhere here (``framed_crop``: a square twice its longer side), captioned
  with that object's name ("a photo of a pink star.");
* scenes: one to three objects drawn at 96 px, the caption naming all of them in varied templates
  and counts ("two blue squares and a red cross.").

Captions never give a box.

Files, under ``$DETECTRON2_DATASETS/synthetic_captions`` (default ``datasets/synthetic_captions``)::

    images/000000.jpg ...     NUM_PAIRS images
    captions.json             [{"file_name": "images/000000.jpg", "caption": "..."}, ...]
    STAMP                     format version and count

Written to a temporary folder and renamed into place on first use (as the detection set);
deterministic (``numpy.random.RandomState`` seeded per image).
"""

import functools
import json
import logging
import multiprocessing
import os
import shutil
import uuid
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image

from .synthetic import _machine_lock
from .synthetic_shapes import CATEGORY_NAMES, framed_crop, render_objects

__all__ = [
    "CAPTIONS_VERSION",
    "NUM_PAIRS",
    "IMAGE_SIZE",
    "caption_for",
    "captions_dir",
    "ensure_caption_dataset",
    "load_caption_dataset",
]

logger = logging.getLogger(__name__)

CAPTIONS_VERSION = "4"
NUM_PAIRS = 10000
IMAGE_SIZE = 96
OBJECT_FRACTION = 0.65
_SEED = 20230318
_RADIUS_RANGE = (9.0, 44.0)
# object photos: scenes as the detection set's (gridclip_d2.data.synthetic) before cropping
_SCENE_SIZE = 256
_SCENE_RADIUS_RANGE = (12.0, 48.0)
_SCENE_NEIGHBOURS = (2, 6)
_NUM_PROCESSES = 2  # other objects in the scene: 2 to 5
_NUM_OBJECTS = ((1, 0.6), (2, 0.25), (3, 0.15))
_NUMBERS = {1: "a", 2: "two", 3: "three"}

_SINGLE = (
    "{}",
    "a photo of {}.",
    "{} on a plain background.",
    "there is {} in the picture.",
    "a picture of {}.",
    "a drawing of {}.",
    "an image with {}.",
    "{}.",
)
_MULTI = (
    "{}.",
    "a photo of {}.",
    "there are {} in the picture.",
    "a picture of {}.",
    "{} on a plain background.",
    "an image with {}.",
    "a drawing of {}.",
)


def _plural(name: str) -> str:
    return name + ("es" if name.endswith(("s", "x")) else "s")


def _phrase(name: str, count: int) -> str:
    if count == 1:
        return ("an " if name[0] in "aeiou" else "a ") + name
    return f"{_NUMBERS[count]} {_plural(name)}"


def caption_for(categories: Sequence[int], rng) -> str:
    """A caption naming every object (category indices, repeats counted) in a random template."""
    counts = {}
    for k in categories:
        counts[CATEGORY_NAMES[k]] = counts.get(CATEGORY_NAMES[k], 0) + 1
    names = list(counts)
    order = rng.permutation(len(names))
    phrases = [_phrase(names[i], counts[names[i]]) for i in order]
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    single = len(categories) == 1
    templates = _SINGLE if single else _MULTI
    return templates[rng.randint(len(templates))].format(listed)


def _object_photo(rng) -> Tuple[np.ndarray, str, List[int]]:
    """One object framed as CLIP sees detected objects, from a detection-like scene."""
    num = len(CATEGORY_NAMES)
    cats = [int(k) for k in rng.randint(num, size=1 + rng.randint(*_SCENE_NEIGHBOURS))]
    pixels, objects = render_objects(_SCENE_SIZE, _SCENE_SIZE, cats, rng, _SCENE_RADIUS_RANGE)
    k, box = objects[0]  # the first object is placed first: always there
    crop = framed_crop(pixels, box, IMAGE_SIZE)
    return crop, caption_for([k], rng), [k]


def _is_object_photo(index: int) -> bool:
    return np.random.RandomState([_SEED, index]).uniform() < OBJECT_FRACTION


def _pair(index: int) -> Tuple[np.ndarray, str, List[int]]:
    rng = np.random.RandomState([_SEED, index])
    if rng.uniform() < OBJECT_FRACTION:  # as _is_object_photo
        return _object_photo(rng)
    sizes, probs = zip(*_NUM_OBJECTS)
    n = int(rng.choice(sizes, p=probs))
    cats = [int(k) for k in rng.randint(len(CATEGORY_NAMES), size=n)]
    if n > 1 and rng.uniform() < 0.5:
        cats[1] = cats[0]  # often two of a kind
    pixels, objects = render_objects(IMAGE_SIZE, IMAGE_SIZE, cats, rng, _RADIUS_RANGE)
    placed = [k for k, _ in objects]
    return pixels, caption_for(placed, rng), sorted(set(placed))


def captions_dir(datasets_root: str = None) -> str:
    root = datasets_root or os.getenv("DETECTRON2_DATASETS", "datasets")
    return os.path.join(root, "synthetic_captions")


def _is_complete(path: str, num_pairs: int) -> bool:
    try:
        with open(os.path.join(path, "STAMP")) as f:
            stamp = json.load(f)
        return (
            stamp.get("version") == CAPTIONS_VERSION
            and stamp.get("num_pairs") == num_pairs
            and len(os.listdir(os.path.join(path, "images"))) == num_pairs
        )
    except (OSError, ValueError, AttributeError):
        return False


def _write_pairs(out_dir: str, indices: range) -> List[dict]:
    entries = []
    for i in indices:
        pixels, caption, named = _pair(i)
        file_name = f"images/{i:06d}.jpg"
        Image.fromarray(pixels).save(os.path.join(out_dir, file_name), quality=92)
        # "categories": the category indices the caption names (a parsed caption, not a label of
        # a region): the pretraining sampler uses it to put captions that share words in a batch
        entries.append({"file_name": file_name, "caption": caption, "categories": named})
    return entries


def _generate(out_dir: str, num_pairs: int) -> None:
    from tqdm import tqdm

    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    # two processes (each pair is a function of its index alone: the same files either way)
    chunks = [range(s, min(s + 500, num_pairs)) for s in range(0, num_pairs, 500)]
    entries = []
    with multiprocessing.get_context(
        "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ).Pool(_NUM_PROCESSES) as pool:
        done = pool.imap(functools.partial(_write_pairs, out_dir), chunks)
        for part in tqdm(done, desc="caption pairs", unit="x500", total=len(chunks)):
            entries += part
    with open(os.path.join(out_dir, "captions.json"), "w") as f:
        json.dump(entries, f)
    with open(os.path.join(out_dir, "STAMP"), "w") as f:
        json.dump({"version": CAPTIONS_VERSION, "num_pairs": num_pairs}, f)


def ensure_caption_dataset(datasets_root: str = None, num_pairs: int = NUM_PAIRS) -> str:
    """Make the image-caption set unless a complete one is there; returns its folder."""
    target = os.path.abspath(captions_dir(datasets_root))
    if num_pairs != NUM_PAIRS:
        target = f"{target}_{num_pairs}"
    if _is_complete(target, num_pairs):
        return target
    with _machine_lock(target):
        if _is_complete(target, num_pairs):
            return target
        tmp = f"{target}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        logger.info(f"Generating {num_pairs} synthetic image-caption pairs into {target} ...")
        try:
            _generate(tmp, num_pairs)
            if os.path.lexists(target):
                shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_caption_dataset(datasets_root: str = None, num_pairs: int = NUM_PAIRS):
    """(images N x 3 x S x S uint8 tensor, captions: N strings, categories: N lists of the
    category indices each caption names), generated if needed."""
    import torch

    root = ensure_caption_dataset(datasets_root, num_pairs)
    with open(os.path.join(root, "captions.json")) as f:
        entries: List[dict] = json.load(f)
    images = np.stack(
        [np.asarray(Image.open(os.path.join(root, e["file_name"])).convert("RGB")) for e in entries]
    )
    return (
        torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        [e["caption"] for e in entries],
        [e["categories"] for e in entries],
    )
