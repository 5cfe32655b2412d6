"""Open-vocabulary COCO: the 48 / 17 split, the prepared jsons, the AP50 evaluator, and
``datasets/prepare_ov_coco.py`` + ``train_net.py`` (two CPU workers, then ``--eval-only``) end to
end on a small COCO-format set made here in COCO 2017's layout."""

import contextlib
import io
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from detectron2.structures import Boxes, Instances

from gridclip_d2 import add_gridclip_config
from gridclip_d2.data.coco_ov import (
    OV_COCO_BASE_CLASSES,
    OV_COCO_CLASSES,
    OV_COCO_EVALUATOR_TYPE,
    OV_COCO_NOVEL_CLASSES,
    make_ov_coco_json,
    ov_coco_category_ids,
)
from gridclip_d2.engine import Trainer
from gridclip_d2.engine.ov_coco_evaluator import (
    OpenVocabCOCOEvaluator,
    format_ov_coco_summary,
    ov_coco_summary,
)
from gridclip_d2.vocabulary import builtin_vocabulary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "GridCLIP_OVCOCO.yaml")
SUMMARY = re.compile(r"AP50 novel (\S+) \| AP50 base (\S+) \| AP50 all (\S+)")

# The split as the benchmark's papers list it (Bansal et al. 2018; OVR-CNN, CVPR 2021).
NOVEL = (
    "airplane bus cat dog cow elephant umbrella tie snowboard skateboard cup knife cake couch "
    "keyboard sink scissors"
).split()
BASE = (
    "person bicycle car motorcycle train truck boat bench bird horse sheep bear zebra giraffe "
    "backpack handbag suitcase frisbee skis kite surfboard bottle fork spoon bowl banana apple "
    "sandwich orange broccoli carrot pizza donut chair bed toilet tv laptop mouse remote microwave "
    "oven toaster refrigerator book clock vase toothbrush"
).split()
COCO_THINGS = [c for c in COCO_CATEGORIES if c["isthing"]]  # COCO 2017's 80, with their ids
COCO_ID = {c["name"]: c["id"] for c in COCO_THINGS}


def _coco_categories():
    return [{"id": c["id"], "name": c["name"], "supercategory": "thing"} for c in COCO_THINGS]


def _ann(ann_id, image_id, name, box, iscrowd=0):
    x, y, w, h = box
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": COCO_ID[name],
        "bbox": list(box),
        "area": float(w * h),
        "iscrowd": iscrowd,
        "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
    }


# ---------------------------------------------------------------------------------------- split
def test_split_is_48_base_and_17_novel_coco_2017_categories():
    assert len(BASE) == 48 and len(NOVEL) == 17 and not set(BASE) & set(NOVEL)
    assert OV_COCO_NOVEL_CLASSES == tuple(NOVEL) and OV_COCO_BASE_CLASSES == tuple(BASE)
    assert len(OV_COCO_CLASSES) == len(set(OV_COCO_CLASSES)) == 65
    assert set(OV_COCO_CLASSES) == set(BASE) | set(NOVEL) and set(OV_COCO_CLASSES) <= set(COCO_ID)
    ids = ov_coco_category_ids()
    assert list(ids) == sorted(ids) == [COCO_ID[n] for n in OV_COCO_CLASSES]  # COCO id order
    assert builtin_vocabulary("coco_ov").names == OV_COCO_CLASSES

    train, val = MetadataCatalog.get("coco_ov_train_base"), MetadataCatalog.get("coco_ov_val")
    for meta in (train, val):  # one class list, one split, one evaluator
        assert meta.thing_classes == list(OV_COCO_CLASSES)
        assert meta.thing_dataset_id_to_contiguous_id == {c: i for i, c in enumerate(ids)}
        assert [meta.thing_classes[i] for i in meta.class_groups["novel"]] == NOVEL
        assert [meta.thing_classes[i] for i in meta.class_groups["base"]] == BASE
        assert meta.evaluator_type == OV_COCO_EVALUATOR_TYPE
    assert train.novel_class_ids == train.class_groups["novel"] and val.novel_class_ids == []
    assert train.json_file.endswith("coco/annotations/ov_coco_train_base.json")
    assert val.image_root.endswith("coco/val2017")


def test_make_ov_coco_json_keeps_base_boxes_for_training_and_the_65_for_val():
    data = {
        "info": {},
        "images": [
            {"id": i, "file_name": f"{i}.jpg", "height": 50, "width": 50} for i in (1, 2, 3)
        ],
        "annotations": [
            _ann(1, 1, "person", [0, 0, 10, 10]),
            _ann(2, 1, "cat", [10, 10, 10, 10]),  # novel
            _ann(3, 2, "teddy bear", [0, 0, 5, 5]),  # not one of the 65
            _ann(4, 3, "car", [0, 0, 20, 20], iscrowd=1),
        ],
        "categories": _coco_categories(),
    }
    train = make_ov_coco_json(data, "train")
    assert [a["id"] for a in train["annotations"]] == [1, 4]  # crowd base box kept
    assert len(train["images"]) == 3 and list(train) == list(data)
    assert [c["name"] for c in train["categories"]] == list(OV_COCO_CLASSES)
    val = make_ov_coco_json(data, "val")
    assert [a["id"] for a in val["annotations"]] == [1, 2, 4]
    assert [img["id"] for img in val["images"]] == [1, 3]  # image 2 holds none of the 65
    assert len(data["annotations"]) == 4 and len(data["categories"]) == 80  # input untouched

    data["categories"] = [c for c in data["categories"] if c["name"] != "couch"]
    with pytest.raises(ValueError, match=r"src.json: 1 of the 65 .*'couch' \(id 63\)"):
        make_ov_coco_json(data, "val", source="src.json")


# ------------------------------------------------------------------------------------ evaluator
# json category name -> boxes (XYWH) on images 1..3: two novel and two base categories
GT = {
    "cat": [(1, [10, 10, 30, 30]), (2, [50, 50, 20, 40])],
    "cup": [(3, [5, 5, 40, 20])],
    "person": [(1, [60, 10, 30, 30]), (3, [0, 50, 25, 25])],
    "car": [(2, [5, 60, 30, 30])],
}


@pytest.fixture(scope="module")
def ov_val_set(tmp_path_factory):
    """A registered OV-COCO-style val set (the 65 categories, the json written by
    ``make_ov_coco_json``) with the boxes of GT."""
    root = tmp_path_factory.mktemp("ov_coco_eval")
    boxes = [(img, name, box) for name, boxes in GT.items() for img, box in boxes]
    anns = [_ann(k + 1, img, name, box) for k, (img, name, box) in enumerate(boxes)]
    data = {
        "images": [
            {"id": i, "file_name": f"{i}.jpg", "height": 100, "width": 100} for i in (1, 2, 3)
        ],
        "annotations": anns,
        "categories": _coco_categories(),
    }
    json_file = root / "ov_val.json"
    json_file.write_text(json.dumps(make_ov_coco_json(data, "val")))
    name = "test_ov_coco_eval_set"
    ref = MetadataCatalog.get("coco_ov_val")
    MetadataCatalog.get(name).set(
        thing_classes=ref.thing_classes,
        thing_dataset_id_to_contiguous_id=ref.thing_dataset_id_to_contiguous_id,
        class_groups=ref.class_groups,
        json_file=str(json_file),
        evaluator_type=OV_COCO_EVALUATOR_TYPE,
    )
    return name, str(json_file)


def _evaluate(name, detections, tmp_path):
    """Run the evaluator on ``detections``: {image id: [(class name, XYWH box, score)]}."""
    ev = OpenVocabCOCOEvaluator(name, distributed=False, output_dir=str(tmp_path))
    ev.reset()
    for image_id in (1, 2, 3):
        dets = detections.get(image_id, [])
        inst = Instances((100, 100))
        inst.pred_boxes = Boxes(
            torch.tensor([[x, y, x + w, y + h] for _, (x, y, w, h), _ in dets]).reshape(-1, 4)
        )
        inst.scores = torch.tensor([s for _, _, s in dets], dtype=torch.float32)
        inst.pred_classes = torch.tensor(
            [OV_COCO_CLASSES.index(n) for n, _, _ in dets], dtype=torch.int64
        )
        ev.process([{"image_id": image_id}], [{"instances": inst}])
    return ev.evaluate()["bbox"]


def _direct_ap50(json_file, detections, names):
    """AP50 over the categories ``names`` by pycocotools' COCOeval alone (catIds restricted)."""
    results = [
        {"image_id": i, "category_id": COCO_ID[n], "bbox": list(box), "score": s}
        for i, dets in detections.items()
        for n, box, s in dets
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(json_file)
        coco_eval = COCOeval(gt, gt.loadRes(results), "bbox")
        coco_eval.params.catIds = sorted(COCO_ID[n] for n in names)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return 100 * coco_eval.stats[1]


def test_evaluator_ap50_perfect_on_novel_none_on_base(ov_val_set, tmp_path):
    name, json_file = ov_val_set
    perfect_novel = {}
    for cls in ("cat", "cup"):
        for img, box in GT[cls]:
            perfect_novel.setdefault(img, []).append((cls, box, 0.9))
    bbox = _evaluate(name, perfect_novel, tmp_path)
    assert bbox["AP50-novel"] == pytest.approx(100.0)
    assert bbox["AP50-base"] == pytest.approx(0.0)
    assert bbox["AP50-all"] == pytest.approx(50.0) == pytest.approx(bbox["AP50"])  # 2 of 4
    assert bbox["AP50-cat"] == pytest.approx(100.0) and bbox["AP50-person"] == pytest.approx(0.0)
    assert math.isnan(bbox["AP50-dog"])  # no ground truth: left out of the means
    assert bbox["AP-cat"] == pytest.approx(100.0)  # Detectron2's own per-category AP is kept


def test_evaluator_ap50_equals_cocoeval_on_each_group(ov_val_set, tmp_path):
    name, json_file = ov_val_set
    rng = np.random.RandomState(0)
    detections = {}
    for cls, boxes in GT.items():
        for img, (x, y, w, h) in boxes:
            # a shifted box (IoU about 0.5-0.9) and a false positive, at random scores
            dx, dy = rng.randint(-6, 7, size=2)
            detections.setdefault(img, []).append(
                (cls, [x + dx, y + dy, w, h], float(rng.uniform(0.1, 1)))
            )
            detections[img].append((cls, [80, 80, 15, 15], float(rng.uniform(0.1, 1))))
    detections[2].append(("dog", [0, 0, 30, 30], 0.8))  # a class without ground truth
    bbox = _evaluate(name, detections, tmp_path)
    novel, base = ["cat", "cup"], ["person", "car"]
    assert bbox["AP50-novel"] == pytest.approx(_direct_ap50(json_file, detections, novel))
    assert bbox["AP50-base"] == pytest.approx(_direct_ap50(json_file, detections, base))
    assert bbox["AP50-all"] == pytest.approx(_direct_ap50(json_file, detections, novel + base))
    assert 0 < bbox["AP50-novel"] < 100 and 0 < bbox["AP50-base"] < 100


def test_trainer_builds_the_ov_coco_evaluator_and_summary(ov_val_set, tmp_path):
    name, _ = ov_val_set
    cfg = get_cfg()
    add_gridclip_config(cfg)
    ev = Trainer.build_evaluator(cfg, name, output_folder=str(tmp_path))
    assert isinstance(ev, OpenVocabCOCOEvaluator) and ev._use_fast_impl is False
    assert ev._max_dets_per_image == [1, 10, 100]
    summary = ov_coco_summary(
        {"AP50-novel": 12.34, "AP50-base": 56.78, "AP50-all": 45.0},
        MetadataCatalog.get(name).class_groups,
    )
    assert summary["num_novel_classes"] == 17 and summary["num_base_classes"] == 48
    text = format_ov_coco_summary(summary, "coco_ov_val", "coco_ov_train_base")
    assert text.splitlines() == [
        "Open-vocabulary summary on coco_ov_val (trained on coco_ov_train_base: 48 base + 17 "
        "novel classes):",
        "  AP50 novel 12.3 | AP50 base 56.8 | AP50 all 45.0",
    ]


# ----------------------------------------------------------------------------------- end to end
# category -> RGB colour of its rectangles; 3 base, 2 novel, 1 outside the 65
COLOURS = {
    "person": (220, 30, 30),
    "car": (30, 30, 220),
    "bottle": (30, 200, 30),
    "cat": (230, 200, 20),
    "cup": (200, 30, 200),
    "teddy bear": (20, 200, 200),
}
TINY = [
    "MODEL.DEVICE", "cpu",
    "MODEL.CLIP.ARCH", "RNtiny96",
    "MODEL.CLIP.WEIGHTS", "synthetic",
    "MODEL.FPN.OUT_CHANNELS", "64",
    "MODEL.GRIDCLIP.NUM_CONVS", "2",
    "MODEL.GRIDCLIP.TEXT_EMBEDDINGS", "",
    "MODEL.GRIDCLIP.PROMPT_ENSEMBLE", "False",
    "MODEL.GRIDCLIP.IMAGE_ALIGN.GRIDS", "[1, 2]",
    "INPUT.MIN_SIZE_TRAIN", "(128,)",
    "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "128",
    "INPUT.MAX_SIZE_TEST", "128",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.MAX_ITER", "40",  # a few seconds; enough to find the base rectangles
    "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.STEPS", "(30,)",
    "SOLVER.CHECKPOINT_PERIOD", "1000",
    "TEST.EVAL_PERIOD", "0",
    "DATALOADER.NUM_WORKERS", "0",
    "SEED", "0",
]  # fmt: skip


def _write_coco(root):
    """COCO 2017's layout under ``root``: 8 train and 4 val images of 160 x 160 px with coloured
    rectangles, instances jsons with COCO's 80 categories. Every image has a base box."""
    rng = np.random.RandomState(0)
    layout = {
        "train2017": [("person", "cat"), ("car", "cup", "teddy bear"), ("bottle", "person")] * 3,
        "val2017": [("person", "cat"), ("car", "cup"), ("bottle", "cat", "teddy bear"), ("car",)],
    }
    os.makedirs(root / "coco" / "annotations")
    for folder, images in layout.items():
        images = images[: 8 if folder == "train2017" else 4]
        os.makedirs(root / "coco" / folder)
        data = {"images": [], "annotations": [], "categories": _coco_categories()}
        for k, names in enumerate(images):
            image_id = (1000 if folder == "val2017" else 0) + k + 1
            pixels = np.full((160, 160, 3), 120, np.uint8)
            for j, name in enumerate(names):
                w, h = (int(v) for v in rng.randint(34, 46, size=2))
                x, y = 8 + 50 * j + int(rng.randint(0, 4)), int(rng.randint(4, 160 - h - 4))
                pixels[y : y + h, x : x + w] = COLOURS[name]
                data["annotations"].append(
                    _ann(len(data["annotations"]) + 1, image_id, name, [x, y, w, h])
                )
            file_name = f"{image_id:012d}.jpg"
            Image.fromarray(pixels).save(root / "coco" / folder / file_name, quality=95)
            data["images"].append(
                {"id": image_id, "file_name": file_name, "height": 160, "width": 160}
            )
        if folder == "train2017":  # a crowd box of a base category: kept, as COCO keeps it
            data["annotations"].append(
                _ann(len(data["annotations"]) + 1, 1, "person", [100, 100, 50, 50], iscrowd=1)
            )
        split = folder[: -len("2017")]
        (root / "coco" / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data))
    return root


def _run(cmd, env, log_path, timeout=280):
    env = dict(env)
    env.pop("OMP_NUM_THREADS", None)  # the workers share the cores themselves
    with open(log_path, "w") as log:
        proc = subprocess.run(
            cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout
        )
    out = open(log_path).read()
    assert proc.returncode == 0, out[-4000:]
    return out


def _summary_line(text):
    found = SUMMARY.findall(text)
    assert found, text[-3000:]
    values = [float(v) for v in found[-1]]
    assert all(math.isfinite(v) and 0 <= v <= 100 for v in values), found
    return values


@pytest.mark.slow
def test_prepare_train_and_eval_only_report_ap50_novel_base_all(tmp_path):
    root = _write_coco(tmp_path / "data")
    env = dict(os.environ, DETECTRON2_DATASETS=str(root))  # + $GRIDCLIP_SYNTHETIC_CLIP (conftest)
    out = _run(
        [sys.executable, os.path.join(REPO, "datasets", "prepare_ov_coco.py")],
        env,
        tmp_path / "prepare.txt",
    )
    assert "coco_ov_train_base: kept 11 of 20 boxes, removed 9 (6 of novel categories" in out
    ann = root / "coco" / "annotations"
    source = json.loads((ann / "instances_train2017.json").read_text())
    base = json.loads((ann / "ov_coco_train_base.json").read_text())
    novel_ids = {COCO_ID[n] for n in NOVEL}
    assert not [a for a in base["annotations"] if a["category_id"] in novel_ids]
    assert base["annotations"] == [
        a for a in source["annotations"] if a["category_id"] in {COCO_ID[n] for n in BASE}
    ]
    assert len(base["images"]) == 8 and len(base["categories"]) == 65
    val = json.loads((ann / "ov_coco_val.json").read_text())
    assert {a["category_id"] for a in val["annotations"]} == {
        COCO_ID[n] for n in ("person", "car", "bottle", "cat", "cup")
    }

    train_dir, eval_dir = tmp_path / "train", tmp_path / "eval"
    train_net = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", CONFIG]
    out = _run(
        train_net + ["--num-gpus", "2", "--dist-url", "auto", *TINY, "OUTPUT_DIR", str(train_dir)],
        env,
        tmp_path / "train.txt",
    )
    log = (train_dir / "log.txt").read_text()
    assert "World size: 2" in log
    trained = _summary_line(log)
    assert trained[1] > 0  # the base rectangles are found: the numbers below are not all zeros
    assert (
        "Open-vocabulary summary on coco_ov_val (trained on coco_ov_train_base: 48 base + 17" in log
    )
    metrics = [json.loads(line) for line in open(train_dir / "metrics.json") if line.strip()][-1]
    for key in ("AP50-novel", "AP50-base", "AP50-all"):
        assert f"bbox/{key}" in metrics and f"open_vocabulary/{key}" in metrics
    assert [round(metrics[f"open_vocabulary/AP50-{g}"], 1) for g in ("novel", "base", "all")] == (
        trained
    )

    out = _run(
        train_net
        + ["--eval-only", *TINY, "OUTPUT_DIR", str(eval_dir)]
        + ["MODEL.WEIGHTS", str(train_dir / "model_final.pth")],
        env,
        tmp_path / "eval.txt",
    )
    evaluated = _summary_line((eval_dir / "log.txt").read_text())
    # pycocotools alone, on the detections the evaluation wrote, gives the numbers it printed
    with open(eval_dir / "inference" / "coco_ov_val" / "coco_instances_results.json") as f:
        written = json.load(f)
    by_image = {}
    names = {i: n for n, i in COCO_ID.items()}
    for d in written:
        by_image.setdefault(d["image_id"], []).append(
            (names[d["category_id"]], d["bbox"], d["score"])
        )
    direct = [
        _direct_ap50(str(ann / "ov_coco_val.json"), by_image, group)
        for group in (["cat", "cup"], ["person", "car", "bottle"], OV_COCO_CLASSES)
    ]
    assert evaluated == pytest.approx([round(v, 1) for v in direct], abs=0.051)
