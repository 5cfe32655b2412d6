"""The embedded synthetic LVIS-format set: determinism, lvis-api format, honest frequencies, boxes
that match the drawn pixels, atomic regeneration, registration."""

import filecmp
import hashlib
import itertools
import json
import os
import shutil
from collections import Counter

import numpy as np
import pytest
from lvis import LVIS
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

from gridclip_d2.data import synthetic
from gridclip_d2.data.synthetic import (
    SYNTHETIC_CATEGORIES,
    SYNTHETIC_CLASS_GROUPS,
    SYNTHETIC_NOVEL_CLASS_IDS,
    SYNTHETIC_SPLITS,
    ensure_synthetic_dataset,
    generate_synthetic_dataset,
)
from gridclip_d2.data.synthetic_shapes import COLOURS


@pytest.fixture(scope="module")
def generated():
    """The set every other test and ``make train`` use (made once per machine, read only here);
    the determinism test compares it with a fresh generation."""
    return ensure_synthetic_dataset()


def _json(root, split):
    with open(os.path.join(root, "annotations", f"synthetic_{split}.json")) as f:
        return json.load(f)


NOVEL_IDS = {k + 1 for k in SYNTHETIC_NOVEL_CLASS_IDS}  # json category ids


def _all_files(root):
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files
    )


def test_generation_is_deterministic(generated, tmp_path):
    again = str(tmp_path / "b")
    generate_synthetic_dataset(again)
    files = _all_files(generated)
    assert files == _all_files(again)
    assert len(files) == sum(n for n, _, _ in SYNTHETIC_SPLITS.values()) + 5  # + 4 jsons + STAMP
    match, mismatch, errors = filecmp.cmpfiles(generated, again, files, shallow=False)
    assert mismatch == [] and errors == []


@pytest.mark.parametrize("split", list(SYNTHETIC_SPLITS))
def test_json_loads_in_lvis_api_with_every_field(generated, split):
    api = LVIS(os.path.join(generated, "annotations", f"synthetic_{split}.json"))
    num_images, first_id, _ = SYNTHETIC_SPLITS[split]
    assert sorted(api.imgs) == list(range(first_id, first_id + num_images))
    cat_ids = set(api.cats)
    assert cat_ids == set(range(1, len(SYNTHETIC_CATEGORIES) + 1))
    for img in api.imgs.values():
        assert {
            "id",
            "file_name",
            "coco_url",
            "height",
            "width",
            "neg_category_ids",
            "not_exhaustive_category_ids",
        } <= set(img)
        assert os.path.isfile(os.path.join(generated, img["file_name"]))
        assert img["coco_url"].split("/")[-2:] == img["file_name"].split("/")
        with Image.open(os.path.join(generated, img["file_name"])) as im:
            assert im.size == (img["width"], img["height"]) and im.mode == "RGB"
        present = {a["category_id"] for a in api.img_ann_map[img["id"]]}
        # exhaustively annotated: every absent category is a negative (the base split says
        # nothing about novel categories, as LVIS's base split says nothing about rare ones)
        known = cat_ids - NOVEL_IDS if split == "train" else cat_ids
        assert set(img["neg_category_ids"]) == known - present
    for ann in api.anns.values():
        assert {"id", "image_id", "category_id", "bbox", "area", "segmentation"} <= set(ann)
        x, y, w, h = ann["bbox"]
        img = api.imgs[ann["image_id"]]
        assert x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]
        assert min(w, h) >= 16, "objects are not tiny"
        assert ann["area"] == w * h
        assert ann["segmentation"] == [[x, y, x + w, y, x + w, y + h, x, y + h]]
    for cat in api.dataset["categories"]:
        assert {
            "id",
            "name",
            "synonyms",
            "def",
            "frequency",
            "image_count",
            "instance_count",
        } <= set(cat)
        assert cat["image_count"] == len(set(api.cat_img_map[cat["id"]]))
        assert cat["instance_count"] == len(api.cat_img_map[cat["id"]])
        if split == "train" and cat["id"] in NOVEL_IDS:
            assert cat["image_count"] == 0, "no novel box in the base split"
        else:
            assert cat["image_count"] > 0, f"{split} has every (base) category"


def test_frequencies_are_honest(generated):
    train = _json(generated, "train_full")
    images_per_cat = {c["id"]: set() for c in train["categories"]}
    for ann in train["annotations"]:
        images_per_cat[ann["category_id"]].add(ann["image_id"])
    for cat in SYNTHETIC_CATEGORIES:
        n = len(images_per_cat[cat["id"]])
        assert cat["image_count"] == n
        assert cat["frequency"] == ("r" if n < 10 else "c" if n < 100 else "f"), cat["name"]
    assert {c["frequency"] for c in SYNTHETIC_CATEGORIES} == {"r", "c", "f"}
    # both splits carry the train frequencies, as LVIS does
    for split in SYNTHETIC_SPLITS:
        cats = _json(generated, split)["categories"]
        assert [(c["id"], c["name"], c["frequency"]) for c in cats] == [
            (c["id"], c["name"], c["frequency"]) for c in SYNTHETIC_CATEGORIES
        ]
    assert train["categories"] == [
        {k: v for k, v in c.items() if k not in ("novel", "group")} for c in SYNTHETIC_CATEGORIES
    ]


def test_boxes_are_tight_around_the_drawn_shapes(generated):
    """Inside a box, many pixels have the category's colour; just outside it, almost none."""
    data = _json(generated, "train_full")
    images = {img["id"]: img for img in data["images"]}
    inside, outside = [], []
    pixels_of = {}
    for ann in sorted(data["annotations"], key=lambda a: a["image_id"]):
        if ann["image_id"] not in pixels_of:  # each image read once
            file_name = os.path.join(generated, images[ann["image_id"]]["file_name"])
            pixels_of = {ann["image_id"]: np.asarray(Image.open(file_name))}  # H x W x 3 RGB
        pixels = pixels_of[ann["image_id"]]
        name = SYNTHETIC_CATEGORIES[ann["category_id"] - 1]["name"]
        colour = np.array(COLOURS[name.split()[0]], dtype=float)
        x, y, w, h = (int(v) for v in ann["bbox"])
        x0, y0 = max(x - 1, 0), max(y - 1, 0)  # the box and a 1-pixel ring around it
        window = pixels[y0 : y + h + 1, x0 : x + w + 1].astype(float)
        close = np.linalg.norm(window - colour, axis=2) < 60  # h' x w'
        box = np.zeros_like(close)
        box[y - y0 : y - y0 + h, x - x0 : x - x0 + w] = True
        inside.append(close[box].mean())
        outside.append(close[~box].mean() if (~box).any() else 0.0)
    assert min(inside) > 0.2
    assert np.median(inside) > 0.4
    # a neighbour of the same colour may touch a box now and then
    assert np.mean(np.array(outside) > 0.1) < 0.02


def test_objects_overlap_little(generated):
    data = _json(generated, "val")
    by_image = {}
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        by_image.setdefault(ann["image_id"], []).append((x, y, x + w, y + h))
    worst = 0.0
    for boxes in by_image.values():
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
                ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
                smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
                worst = max(worst, iw * ih / smaller)
    assert worst < 0.3


def test_ensure_keeps_a_complete_set_and_remakes_a_broken_one(generated, tmp_path):
    target = tmp_path / "synthetic"
    shutil.copytree(generated, target)
    stamp_mtime = os.stat(target / "STAMP").st_mtime_ns
    assert ensure_synthetic_dataset(str(tmp_path)) == str(target)
    assert os.stat(target / "STAMP").st_mtime_ns == stamp_mtime, "a complete set is not rewritten"

    # a half-written set (an image lost) is made again, identical to a fresh one
    victim = target / "train" / "000007.jpg"
    os.remove(victim)
    assert ensure_synthetic_dataset(str(tmp_path)) == str(target)
    assert filecmp.cmp(victim, os.path.join(generated, "train", "000007.jpg"), shallow=False)
    assert os.listdir(tmp_path) == ["synthetic"], "no temporary folder is left behind"

    # an older format version is not complete
    stamp = json.loads((target / "STAMP").read_text())
    (target / "STAMP").write_text(json.dumps(dict(stamp, version="0")))
    assert not synthetic._is_complete(str(target))


def test_registered_splits_load_with_metadata():
    for split, (num_images, first_id, _) in SYNTHETIC_SPLITS.items():
        name = f"synthetic_{split}"
        records = DatasetCatalog.get(name)
        meta = MetadataCatalog.get(name)
        assert len(records) == num_images
        assert records[0]["image_id"] == first_id
        assert all(os.path.isfile(r["file_name"]) for r in records)
        seen = {o["category_id"] for r in records for o in r["annotations"]}
        novel = set(SYNTHETIC_NOVEL_CLASS_IDS)
        every = set(range(len(SYNTHETIC_CATEGORIES)))
        assert seen == (every - novel if split == "train" else every)
        assert meta.thing_classes == [c["name"] for c in SYNTHETIC_CATEGORIES]
        assert meta.class_frequency == [c["frequency"] for c in SYNTHETIC_CATEGORIES]
        assert meta.image_count_per_class == [
            0 if c["novel"] else c["image_count"] for c in SYNTHETIC_CATEGORIES
        ]
        assert meta.novel_class_ids == (sorted(novel) if split == "train" else [])
        assert meta.class_groups == SYNTHETIC_CLASS_GROUPS
        assert meta.evaluator_type == "lvis"
        assert os.path.isfile(meta.json_file) and os.path.isdir(meta.image_root)


def test_open_vocabulary_split(generated):
    """Novel categories are drawn in training images but have no box in the training json (the
    LVIS base-split rule); base frequencies vary; names are plain words."""
    full, base, val = (_json(generated, s) for s in ("train_full", "train", "val"))
    assert len(SYNTHETIC_CATEGORIES) == 30 and len(NOVEL_IDS) == 12
    assert all(" " in c["name"] and "_" not in c["name"] for c in SYNTHETIC_CATEGORIES)
    assert not any(a["category_id"] in NOVEL_IDS for a in base["annotations"])
    in_full = {a["category_id"] for a in full["annotations"]}
    assert NOVEL_IDS <= in_full, "novel objects appear in the training images"
    novel_images = {a["image_id"] for a in full["annotations"] if a["category_id"] in NOVEL_IDS}
    assert len(novel_images) > 100
    assert [a for a in full["annotations"] if a["category_id"] not in NOVEL_IDS] == base[
        "annotations"
    ]
    assert {a["category_id"] for a in val["annotations"]} == set(range(1, 31))
    counts = sorted(c["image_count"] for c in base["categories"] if c["id"] not in NOVEL_IDS)
    assert counts[0] < 10 and counts[-1] > 100, "base categories keep a long tail"


def test_three_groups_and_concepts_only_clip_knows(generated):
    """Base, novel-compositional, novel-concept: at least 4 categories each, together every
    category once; the novel ones are exactly the novel split. A novel-compositional name combines
    a colour and a shape that base categories show; a novel-concept name has "pink" or "star",
    which no base category has (so no base box ever shows them), and every novel-concept object
    is drawn in training images, without a box."""
    groups = SYNTHETIC_CLASS_GROUPS
    assert list(groups) == ["base", "novel-compositional", "novel-concept"]
    assert all(len(ids) >= 4 for ids in groups.values())
    assert sorted(sum(groups.values(), [])) == list(range(len(SYNTHETIC_CATEGORIES)))
    assert sorted(groups["novel-compositional"] + groups["novel-concept"]) == sorted(
        SYNTHETIC_NOVEL_CLASS_IDS
    )
    names = [c["name"] for c in SYNTHETIC_CATEGORIES]
    base_words = {w for k in groups["base"] for w in names[k].split()}
    for k in groups["novel-compositional"]:
        assert set(names[k].split()) <= base_words, names[k]
    for k in groups["novel-concept"]:
        colour, shape = names[k].split()
        assert colour not in base_words or shape not in base_words, names[k]
        assert {"pink", "star"} & {colour, shape}, names[k]
    assert not {"pink", "star"} & base_words
    full, base = _json(generated, "train_full"), _json(generated, "train")
    concept_ids = {k + 1 for k in groups["novel-concept"]}
    drawn = Counter(
        a["category_id"] for a in full["annotations"] if a["category_id"] in concept_ids
    )
    assert set(drawn) == concept_ids and min(drawn.values()) >= 50, drawn
    assert not any(a["category_id"] in NOVEL_IDS for a in base["annotations"])
    assert {c["id"] for c in base["categories"] if c["image_count"] > 0}.isdisjoint(NOVEL_IDS)


def test_splits_are_disjoint(generated):
    """train, val and test: their own seeds, image ids, files and pixels."""
    assert set(SYNTHETIC_SPLITS) == {"train", "val", "test"}
    seeds = [seed for _, _, seed in SYNTHETIC_SPLITS.values()]
    assert len(set(seeds)) == 3
    ids, files, digests = {}, {}, {}
    for split in SYNTHETIC_SPLITS:
        images = _json(generated, split)["images"]
        ids[split] = {img["id"] for img in images}
        files[split] = {img["file_name"] for img in images}
        digests[split] = {
            hashlib.sha1(open(os.path.join(generated, f), "rb").read()).hexdigest()
            for f in files[split]
        }
        assert len(digests[split]) == len(images), f"{split}: an image drawn twice"
    for a, b in itertools.combinations(SYNTHETIC_SPLITS, 2):
        assert ids[a].isdisjoint(ids[b]) and files[a].isdisjoint(files[b]), (a, b)
        assert digests[a].isdisjoint(digests[b]), (a, b)
