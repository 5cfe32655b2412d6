"""The LVIS v1 open-vocabulary base split: datasets/prepare_lvis_base.py drops exactly the rare
annotations, and a fresh process registers lvis_v1_train_base (and our metadata on the built-in
LVIS v1 names) from $DETECTRON2_DATASETS."""

import copy
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES

from gridclip_d2.data.lvis_v1 import (
    lvis_v1_class_frequency,
    lvis_v1_rare_class_ids,
    make_base_split,
    register_lvis_v1_open_vocab,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "datasets", "prepare_lvis_base.py")
FREQ = {c["id"]: c["frequency"] for c in LVIS_CATEGORIES}
RARE = sorted(i for i, f in FREQ.items() if f == "r")
COMMON = sorted(i for i, f in FREQ.items() if f == "c")
FREQUENT = sorted(i for i, f in FREQ.items() if f == "f")


def _mini_lvis_train():
    """A tiny json shaped like lvis_v1_train.json: the 1203 categories, 4 COCO-style images."""
    cats = [dict(c, image_count=0, instance_count=0) for c in LVIS_CATEGORIES]
    images = [
        {
            "id": i,
            "height": 480,
            "width": 640,
            "coco_url": f"http://images.cocodataset.org/train2017/{i:012d}.jpg",
            "neg_category_ids": [RARE[5], COMMON[5], FREQUENT[5]],
            "not_exhaustive_category_ids": [RARE[6], FREQUENT[6]],
        }
        for i in (11, 12, 13, 14)
    ]
    # (image, category): image 13 only has rare objects
    pairs = [
        (11, RARE[0]),
        (11, COMMON[0]),
        (11, FREQUENT[0]),
        (11, FREQUENT[0]),
        (12, COMMON[1]),
        (12, RARE[1]),
        (13, RARE[0]),
        (13, RARE[2]),
        (14, FREQUENT[1]),
        (14, COMMON[0]),
    ]
    anns = [
        {
            "id": k + 1,
            "image_id": img,
            "category_id": cat,
            "area": 100.0,
            "bbox": [10.0 + k, 20.0, 30.0, 40.0],
            "segmentation": [[10.0, 20.0, 40.0, 20.0, 40.0, 60.0, 10.0, 60.0]],
        }
        for k, (img, cat) in enumerate(pairs)
    ]
    return {"info": {}, "licenses": [], "images": images, "annotations": anns, "categories": cats}


def _run(args, env_root):
    env = dict(os.environ, DETECTRON2_DATASETS=str(env_root))
    return subprocess.run(
        [sys.executable] + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def _script():
    spec = importlib.util.spec_from_file_location("prepare_lvis_base", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("d2_datasets")
    os.makedirs(root / "lvis")
    src = _mini_lvis_train()
    (root / "lvis" / "lvis_v1_train.json").write_text(json.dumps(src))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DETECTRON2_DATASETS", str(root))
        assert _script().main([]) == 0  # default paths under $DETECTRON2_DATASETS
    return root, src


def test_base_split_drops_exactly_the_rare_annotations(prepared):
    root, src = prepared
    base = json.loads((root / "lvis" / "lvis_v1_train_base.json").read_text())
    kept = [a for a in src["annotations"] if FREQ[a["category_id"]] != "r"]
    assert base["annotations"] == kept
    assert len(kept) == 6 and len(src["annotations"]) == 10
    # every category stays, in the same order, with its frequency; counts describe the base json
    assert [(c["id"], c["name"], c["frequency"]) for c in base["categories"]] == [
        (c["id"], c["name"], c["frequency"]) for c in src["categories"]
    ]
    counts = {c["id"]: (c["image_count"], c["instance_count"]) for c in base["categories"]}
    assert counts[FREQUENT[0]] == (1, 2) and counts[COMMON[0]] == (2, 2)
    assert counts[RARE[0]] == (0, 0)
    # every image stays (image 13 is left without objects); rare ids leave the image-level lists
    assert [i["id"] for i in base["images"]] == [11, 12, 13, 14]
    assert base["images"][0]["neg_category_ids"] == [COMMON[5], FREQUENT[5]]
    assert base["images"][0]["not_exhaustive_category_ids"] == [FREQUENT[6]]
    assert base["images"][0]["coco_url"] == src["images"][0]["coco_url"]

    info = json.loads((root / "lvis" / "lvis_v1_train_cat_info.json").read_text())
    assert len(info) == 1203
    by_id = {c["id"]: c for c in info}
    assert (by_id[RARE[0]]["image_count"], by_id[RARE[0]]["instance_count"]) == (2, 2)
    assert (by_id[FREQUENT[0]]["image_count"], by_id[FREQUENT[0]]["instance_count"]) == (1, 2)


def test_make_base_split_leaves_its_input_alone_and_checks_frequency():
    src = _mini_lvis_train()
    before = copy.deepcopy(src)
    make_base_split(src)
    assert src == before
    src["categories"][4].pop("frequency")
    with pytest.raises(ValueError, match="mini.json: category 5 has frequency None"):
        make_base_split(src, source="mini.json")


def test_script_refuses_bad_paths(tmp_path, capsys):
    script = _script()
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--src", str(tmp_path / "absent.json")])
    assert exit_info.value.code == 2 and "absent.json' does not exist" in capsys.readouterr().err
    src = tmp_path / "train.json"
    src.write_text(json.dumps(_mini_lvis_train()))
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--src", str(src), "--out", str(src)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--out" in err and "overwritten" in err
    assert json.loads(src.read_text()) == _mini_lvis_train()


def test_base_split_without_json_or_counts(tmp_path):
    name = "lvis_v1_train_base_" + tmp_path.name
    register_lvis_v1_open_vocab(str(tmp_path), base_name=name)
    assert MetadataCatalog.get(name).get("image_count_per_class") is None  # no cat-info file
    with pytest.raises(FileNotFoundError, match="lvis_v1_train_base.json.*prepare_lvis_base.py"):
        DatasetCatalog.get(name)
    os.makedirs(tmp_path / "lvis")
    (tmp_path / "lvis" / "lvis_v1_train_base.json").write_text(
        json.dumps(make_base_split(_mini_lvis_train()))
    )
    assert len(DatasetCatalog.get(name)) == 4
    counts = MetadataCatalog.get(name).image_count_per_class  # counted while loading
    assert len(counts) == 1203 and sum(counts) == 5 and counts[COMMON[0] - 1] == 2


_PROBE = """
import json, gridclip_d2
from detectron2.data import DatasetCatalog, MetadataCatalog
out = {}
for name in ("lvis_v1_train", "lvis_v1_val", "lvis_v1_train_base"):
    m = MetadataCatalog.get(name)
    out[name] = {k: m.get(k) for k in ("class_frequency", "image_count_per_class",
                                       "novel_class_ids", "evaluator_type", "json_file",
                                       "image_root")}
    out[name]["num_classes"] = len(m.thing_classes)
records = DatasetCatalog.get("lvis_v1_train_base")
out["records"] = [(r["image_id"], r["file_name"], [o["category_id"] for o in r["annotations"]])
                  for r in records]
print(json.dumps(out))
"""


def test_fresh_process_registers_the_base_split(prepared):
    root, _ = prepared
    proc = _run(["-c", _PROBE], root)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    rare = lvis_v1_rare_class_ids()
    assert len(rare) == 337
    base = out["lvis_v1_train_base"]
    assert base["num_classes"] == 1203
    assert base["novel_class_ids"] == rare
    assert base["class_frequency"] == lvis_v1_class_frequency()
    assert base["evaluator_type"] == "lvis"
    assert base["json_file"] == os.path.join(str(root), "lvis/lvis_v1_train_base.json")
    full = out["lvis_v1_train"]["image_count_per_class"]
    assert full[RARE[0] - 1] == 2 and full[FREQUENT[0] - 1] == 1 and sum(full) == 9
    assert base["image_count_per_class"] == [0 if i in set(rare) else n for i, n in enumerate(full)]
    for name in ("lvis_v1_train", "lvis_v1_val"):
        assert out[name]["novel_class_ids"] == []
        assert out[name]["class_frequency"] == base["class_frequency"]
        assert out[name]["image_count_per_class"] == full
    # Detectron2's loader: contiguous id = LVIS id - 1, images under coco/<split folder>/
    records = {r[0]: r for r in out["records"]}
    assert records[11][1] == os.path.join(str(root), "coco", "train2017", "000000000011.jpg")
    assert sorted(records[11][2]) == sorted([COMMON[0] - 1, FREQUENT[0] - 1, FREQUENT[0] - 1])
    assert records[13][2] == []
    assert not any(c in set(rare) for r in out["records"] for c in r[2])
