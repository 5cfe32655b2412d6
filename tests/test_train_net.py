"""train_net.py end to end on the embedded synthetic data: training, evaluation, --eval-only,
--resume after a kill, two gloo workers on CPU, and a user's own LVIS-format data set.

Runs are tiny (128 px images, 2 images per batch, a few iterations); AP after so few steps
is near 0, so reproductions are checked on the detections themselves, not only on AP.
"""

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.evaluation import COCOEvaluator  # noqa: E402

import train_net  # noqa: E402
from gridclip_d2 import add_gridclip_config  # noqa: E402
from gridclip_d2.engine import (  # noqa: E402
    OpenVocabLVISEvaluator,
    Trainer,
    adapt_cfg_to_hardware,
    available_cpus,
)

CONFIG = os.path.join(REPO, "configs", "GridCLIP_synthetic.yaml")
_spec = importlib.util.spec_from_file_location(
    "gridclip_demo_for_train_net", os.path.join(REPO, "demo", "demo.py")
)
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)
TINY = [
    "DATASETS.TEST",
    "('synthetic_val',)",  # the config's synthetic_test is twice its size
    "SOLVER.IMS_PER_BATCH",
    "2",
    "SOLVER.MAX_ITER",
    "4",
    "SOLVER.WARMUP_ITERS",
    "2",
    "SOLVER.STEPS",
    "(3,)",
    "SOLVER.CHECKPOINT_PERIOD",
    "1000",
    "INPUT.MIN_SIZE_TRAIN",
    "(128,)",
    "INPUT.MAX_SIZE_TRAIN",
    "128",
    "INPUT.MIN_SIZE_TEST",
    "128",
    "INPUT.MAX_SIZE_TEST",
    "128",
]


def _args(out_dir, *opts, flags=()):
    argv = ["--config-file", CONFIG, *flags, *TINY, "OUTPUT_DIR", str(out_dir), *opts]
    return train_net.default_argument_parser().parse_args(argv)


def _cli(out_dir, *opts, flags=(), **kwargs):
    """``python train_net.py ...`` in a subprocess (as a user runs it); output goes to a file
    (a pipe nobody reads would block the run once full)."""
    cmd = [
        sys.executable,
        os.path.join(REPO, "train_net.py"),
        "--config-file",
        CONFIG,
        *flags,
        *TINY,
        "OUTPUT_DIR",
        str(out_dir),
        *opts,
    ]
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    os.makedirs(out_dir, exist_ok=True)
    console = open(os.path.join(out_dir, "console.txt"), "w")
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=console,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        **kwargs,
    )
    proc.console = console.name
    return proc


def _console(proc):
    with open(proc.console) as f:
        return f.read()


def _kill(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and the workers it spawned
    proc.wait()


def _finish(proc, timeout=600):
    try:
        proc.wait(timeout=timeout)
    finally:
        _kill(proc)
    out = _console(proc)
    assert proc.returncode == 0, out[-4000:]
    return out


def _metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _detections(out_dir, dataset="synthetic_val"):
    """(image id, category id, score, box) of each detection, sorted; rounded to keep the tuples
    short (use where the same process made both lists, so that floats are bit-equal)."""
    return sorted(
        (
            d["image_id"],
            d["category_id"],
            round(d["score"], 5),
            tuple(round(v, 2) for v in d["bbox"]),
        )
        for d in _raw_detections(out_dir, dataset)
    )


def _raw_detections(out_dir, dataset="synthetic_val"):
    path = os.path.join(out_dir, "inference", dataset, "lvis_instances_results.json")
    with open(path) as f:
        return json.load(f)


# Two runs of the same model in different processes or thread counts add floats in other orders:
# float32 has a relative rounding error of 6e-8 per operation, and a convolution of K = 3 x 3 x 256
# terms accumulates up to about sqrt(K) of them (1e-6 relative); through the ~20 layers of backbone,
# neck and head that stays well under 1e-4 relative on a logit, so under 1e-4 on a sigmoid score
# and 1e-4 x 128 px on a box corner. The tolerances below are ten times that.
SCORE_TOL = 1e-3
BOX_TOL_PX = 0.2


def _matched_fraction(a, b):
    """Fraction of the longer of two detection lists that pairs one to one (same image and category,
    score within SCORE_TOL, every box coordinate within BOX_TOL_PX), matched greedily by score.

    What stays unmatched are detections at a discontinuity that a last-bit change can move: the
    per-image cut of the top 300, the score threshold, an NMS overlap at exactly its IoU threshold,
    or two near-equal scores swapping places in a top-k."""
    groups = {}
    for side, dets in enumerate((a, b)):
        for d in dets:
            groups.setdefault((d["image_id"], d["category_id"]), ([], []))[side].append(d)
    matched = 0
    for left, right in groups.values():
        right = sorted(right, key=lambda d: -d["score"])
        used = [False] * len(right)
        for d in sorted(left, key=lambda d: -d["score"]):
            for j, e in enumerate(right):
                if used[j] or abs(e["score"] - d["score"]) > SCORE_TOL:
                    continue
                if max(abs(u - v) for u, v in zip(d["bbox"], e["bbox"])) <= BOX_TOL_PX:
                    used[j] = True
                    matched += 1
                    break
    return matched / max(len(a), len(b), 1)


# ---------------------------------------------------------------------------------- fast checks
def test_setup_merges_overrides_and_writes_config(tmp_path):
    args = _args(
        tmp_path,
        "SOLVER.AMP.ENABLED",
        "True",
        "MODEL.DEVICE",
        "cuda",
        flags=["--num-gpus", "1", "--num-machines", "1", "--machine-rank", "0"],
    )
    cfg = train_net.setup(args)
    assert cfg.MODEL.META_ARCHITECTURE == "GridCLIP" and cfg.MODEL.CLIP.ARCH == "RNtiny96"
    assert cfg.SOLVER.MAX_ITER == 4 and cfg.INPUT.MIN_SIZE_TRAIN == (128,)
    assert cfg.DATASETS.TRAIN == ("synthetic_train",)
    assert (tmp_path / "config.yaml").is_file()  # Detectron2's default_setup ran
    if not torch.cuda.is_available():  # AMP and CUDA turned off, with a warning
        assert cfg.MODEL.DEVICE == "cpu" and cfg.SOLVER.AMP.ENABLED is False
    assert cfg.is_frozen()


def test_adapt_cfg_to_hardware_leaves_runnable_config_alone():
    cfg = get_cfg()
    add_gridclip_config(cfg)
    cfg.merge_from_file(CONFIG)
    assert adapt_cfg_to_hardware(cfg) is cfg  # cpu, no AMP: nothing to change


def test_optimizer_does_not_decay_temperature_or_logit_bias(tmp_path):
    cfg = train_net.setup(_args(tmp_path))
    model = Trainer.build_model(cfg)
    optimizer = Trainer.build_optimizer(cfg, model)
    decay = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            decay[names[id(p)]] = group["weight_decay"]
    assert decay["head.log_temperature"] == 0.0 and decay["head.logit_bias"] == 0.0
    assert decay["head.embed.weight"] == cfg.SOLVER.WEIGHT_DECAY > 0


def test_missing_config_file_is_named(tmp_path):
    args = train_net.default_argument_parser().parse_args(["--config-file", "no/such.yaml"])
    with pytest.raises(FileNotFoundError, match="no/such.yaml"):
        train_net.setup(args)


def test_build_evaluator(tmp_path):
    cfg = train_net.setup(_args(tmp_path))
    ev = Trainer.build_evaluator(cfg, "synthetic_val")
    assert isinstance(ev, OpenVocabLVISEvaluator)
    assert ev._max_dets_per_image == 300 and ev._tasks == ("bbox",)
    assert ev._output_dir == os.path.join(str(tmp_path), "inference", "synthetic_val")
    coco_json = tmp_path / "coco.json"
    coco_json.write_text(
        json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]})
    )
    MetadataCatalog.get("test_train_net_coco").set(evaluator_type="coco", json_file=str(coco_json))
    coco = Trainer.build_evaluator(cfg, "test_train_net_coco", output_folder=str(tmp_path))
    assert isinstance(coco, COCOEvaluator) and coco._use_fast_impl is False
    MetadataCatalog.get("test_train_net_no_evaluator").set(thing_classes=["a"])
    with pytest.raises(NotImplementedError, match="'test_train_net_no_evaluator'"):
        Trainer.build_evaluator(cfg, "test_train_net_no_evaluator")


# ---------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_train_evaluate_and_eval_only_reproduces(tmp_path):
    train_dir, eval_dir = tmp_path / "train", tmp_path / "eval"
    results = train_net.main(_args(train_dir))
    # Results of the final evaluation, with the open-vocabulary summary.
    assert set(results) >= {"bbox", "open_vocabulary"}
    summary = results["open_vocabulary"]
    assert summary["AP"] == pytest.approx(results["bbox"]["AP"])
    assert summary["num_base_classes"] == 18 and summary["num_novel_classes"] == 12
    assert summary["APnovel"] == pytest.approx(results["bbox"]["APnovel"])
    assert summary["APbase"] == pytest.approx(results["bbox"]["APbase"])
    # Detectron2's outputs: checkpoint, metrics.json (with the final AP), TensorBoard, log, plot.
    final = torch.load(train_dir / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["iteration"] == 3
    records = _metrics(train_dir)
    assert records[-1]["bbox/AP"] == pytest.approx(results["bbox"]["AP"])
    assert any("total_loss" in r and "lr" in r for r in records)
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(train_dir))
    log = (train_dir / "log.txt").read_text()
    assert "eta:" in log and "Open-vocabulary summary on synthetic_val" in log
    # after the usual lines, AP per class group, in exactly this form
    groups = (
        r"\n  AP novel \S+ \| AP base \S+\n"
        r"  AP base (\S+) \| AP novel-compositional (\S+) \| AP novel-concept (\S+)\n"
    )
    found = re.search(groups, log)
    assert found, log[-2000:]
    assert [float(v) for v in found.groups()] == [
        pytest.approx(round(summary[k], 1), abs=0.051)
        for k in ("AP-base", "AP-novel-compositional", "AP-novel-concept")
    ]
    png = np.asarray(Image.open(train_dir / "training_curves.png"))
    assert png.shape[0] > 100 and png.std() > 5

    eval_results = train_net.main(
        _args(eval_dir, "MODEL.WEIGHTS", str(train_dir / "model_final.pth"), flags=["--eval-only"])
    )
    assert eval_results["bbox"] == pytest.approx(results["bbox"], nan_ok=True)
    assert _detections(eval_dir) == _detections(train_dir)
    _check_cross_dataset_evaluation(train_dir / "model_final.pth", tmp_path)


def _subset_of_synthetic_val(tmp_path, name, shuffle):
    """The first 10 images of synthetic_val as a new LVIS-format set; with ``shuffle`` its
    categories are renumbered, listed in reverse order, "red circle" is spelled "red_circle", and
    two classes the model never saw are added."""
    from gridclip_d2.data import register_lvis_format

    meta = MetadataCatalog.get("synthetic_val")
    with open(meta.json_file) as f:
        data = json.load(f)
    images = data["images"][:10]
    keep = {img["id"] for img in images}
    anns = [a for a in data["annotations"] if a["image_id"] in keep]
    cats = data["categories"]
    if shuffle:
        new_id = {c["id"]: 1000 - 7 * c["id"] for c in cats}  # reverses the order of the ids
        cats = [
            dict(
                c, id=new_id[c["id"]], name="red_circle" if c["name"] == "red circle" else c["name"]
            )
            for c in cats
        ]
        cats += [
            {"id": 5, "name": "pink star", "frequency": "r"},
            {"id": 6, "name": "white ring", "frequency": "r"},
        ]
        anns = [dict(a, category_id=new_id[a["category_id"]]) for a in anns]
        images = [
            dict(
                img,
                neg_category_ids=[new_id[c] for c in img["neg_category_ids"]] + [5, 6],
                not_exhaustive_category_ids=[],
            )
            for img in images
        ]
    json_file = tmp_path / f"{name}.json"
    json_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    register_lvis_format(name, str(json_file), meta.image_root)


def _check_cross_dataset_evaluation(weights, tmp_path):
    """--eval-only on two test sets with other class lists: each is evaluated with its own classes,
    and every detection keeps its class name whatever id the set gives that class."""
    suffix = os.path.basename(str(tmp_path))
    original, shuffled = f"xval_original_{suffix}", f"xval_shuffled_{suffix}"
    _subset_of_synthetic_val(tmp_path, original, shuffle=False)
    _subset_of_synthetic_val(tmp_path, shuffled, shuffle=True)
    out = tmp_path / "cross"
    # No candidate or per-image cap: extra classes then cannot displace any detection.
    results = train_net.main(
        _args(
            out,
            "MODEL.WEIGHTS",
            str(weights),
            "DATASETS.TEST",
            f"('{original}', '{shuffled}')",
            "MODEL.GRIDCLIP.SCORE_THRESH_TEST",
            "0.002",
            "MODEL.GRIDCLIP.TOPK_CANDIDATES_TEST",
            "100000",
            "TEST.DETECTIONS_PER_IMAGE",
            "100000",
            flags=["--eval-only"],
        )
    )
    assert set(results) == {original, shuffled}

    def by_name(dataset):
        names = {
            c["id"]: c["name"].replace("_", " ")
            for c in json.loads((tmp_path / f"{dataset}.json").read_text())["categories"]
        }
        return sorted(
            (img, names[cat], score, box) for img, cat, score, box in _detections(out, dataset)
        )

    a, b = by_name(original), by_name(shuffled)
    assert len(a) > 100
    assert [d for d in b if d[1] not in ("pink star", "white ring")] == a
    assert {d[1] for d in b} - {d[1] for d in a} <= {"pink star", "white ring"}
    # The two new classes had no training boxes: novel, with the 12 novel classes of the split.
    assert results[shuffled]["open_vocabulary"]["num_novel_classes"] == 14
    assert results[original]["open_vocabulary"]["num_novel_classes"] == 12
    log = (out / "log.txt").read_text()
    assert (
        f"Evaluating {shuffled} with its own 32 classes "
        "(30 of them in the model's 30-class vocabulary)" in log
    )


@pytest.mark.slow
def test_resume_after_kill_continues_from_last_checkpoint(tmp_path):
    # A long run with a checkpoint every 2 iterations, killed once a few checkpoints exist.
    proc = _cli(
        tmp_path, "SOLVER.MAX_ITER", "1000", "SOLVER.CHECKPOINT_PERIOD", "2", "DATASETS.TEST", "()"
    )
    try:
        deadline = time.time() + 600
        while len(list(tmp_path.glob("model_*.pth"))) < 2:  # iterations 1 and 3 saved
            assert proc.poll() is None, _console(proc)[-4000:]
            assert time.time() < deadline, "no checkpoint after 600 s"
            time.sleep(0.5)
        time.sleep(1.0)  # killed some time after a checkpoint, not right at it
    finally:
        _kill(proc)
    last = (tmp_path / "last_checkpoint").read_text().strip()
    done = torch.load(tmp_path / last, map_location="cpu", weights_only=False)["iteration"]
    assert done >= 3 and not (tmp_path / "model_final.pth").exists()

    max_iter = done + 4
    resume_args = _args(
        tmp_path,
        "SOLVER.MAX_ITER",
        str(max_iter),
        "SOLVER.CHECKPOINT_PERIOD",
        "2",
        flags=["--resume"],
    )
    # The trainer restores iteration, LR schedule and optimizer (SGD momentum) from the checkpoint.
    saved = torch.load(tmp_path / last, map_location="cpu", weights_only=False)["trainer"]
    trainer = Trainer(train_net.setup(resume_args))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == done + 1
    assert trainer.scheduler.last_epoch == saved["hooks"]["LRScheduler"]["last_epoch"] == done + 1
    momentum = trainer._trainer.optimizer.state_dict()["state"]
    assert len(momentum) == len(saved["_trainer"]["optimizer"]["state"]) > 0
    for k, v in saved["_trainer"]["optimizer"]["state"].items():
        torch.testing.assert_close(momentum[k]["momentum_buffer"], v["momentum_buffer"])
    del trainer

    metrics_file = tmp_path / "metrics.json"
    rows_before = len(_metrics(tmp_path)) if metrics_file.exists() else 0  # the killed run's rows
    results = train_net.main(resume_args)
    assert "bbox" in results
    log = (tmp_path / "log.txt").read_text()
    assert f"Starting training from iteration {done + 1}" in log
    final = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["iteration"] == max_iter - 1
    assert final["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == max_iter
    # Rows the resumed run wrote (metrics.json is appended to): only iterations after the
    # checkpoint.
    resumed = [r["iteration"] for r in _metrics(tmp_path)[rows_before:] if "total_loss" in r]
    assert resumed and resumed[-1] == max_iter - 1 and all(it > done for it in resumed), (
        done,
        resumed,
    )


@pytest.mark.slow
def test_two_cpu_workers_train_a_model_that_evaluates(tmp_path):
    out = _finish(_cli(tmp_path, flags=["--num-gpus", "2", "--dist-url", "auto"]))
    log = (tmp_path / "log.txt").read_text()
    assert "World size: 2" in log and "Open-vocabulary summary on synthetic_val" in log
    # the terminal: progress, not the environment, the config or the layers (in log.txt, once,
    # without colour codes); no library warning (gridclip_d2/library_warnings.py)
    for file_only in ("Environment info:", "Full config:\n", "Model:\nGridCLIP("):
        assert file_only not in out and log.count(file_only) == 1, file_only
    assert "\x1b[" not in out + log and "Warning" not in out, out[-3000:]
    assert "Full config saved to" in out and "M parameters" in out
    threads = max(1, available_cpus() // 2)  # the cores shared between the two workers
    assert f"CPU worker 0/2: {threads} intra-op thread(s)" in out
    assert (
        f"CPU worker 1/2: {threads} intra-op thread(s)" in (tmp_path / "log.txt.rank1").read_text()
    )
    ap_distributed = _metrics(tmp_path)[-1]["bbox/AP"]
    assert (tmp_path / "model_final.pth").is_file()
    results = train_net.main(
        _args(
            tmp_path / "eval",
            "MODEL.WEIGHTS",
            str(tmp_path / "model_final.pth"),
            flags=["--eval-only"],
        )
    )
    # One process with all threads vs two with their share: float sums differ in the last bits.
    # Detections pair up within the tolerances of the numerics; the few that do not sit at a
    # discontinuity (see _matched_fraction), and AP moves by no more than those few can move it.
    single, distributed = _raw_detections(tmp_path / "eval"), _raw_detections(tmp_path)
    assert len(distributed) > 1000
    assert abs(len(single) - len(distributed)) <= 0.01 * len(distributed)
    assert _matched_fraction(single, distributed) >= 0.99
    # 1% of the detections changed can move AP by a few percent of itself, not more
    assert results["bbox"]["AP"] == pytest.approx(ap_distributed, rel=0.05, abs=1e-3)


def _write_user_dataset(
    root, colours=(("red box", (220, 20, 20)), ("blue box", (20, 20, 220))), n=6
):
    """A user's LVIS-format set: json with file_name relative to the image folder, non-contiguous
    category ids, no frequency / neg_category_ids (filled in by the registration)."""
    rng = np.random.RandomState(0)
    (root / "images").mkdir(parents=True)
    cats = [{"id": 10 * (k + 1), "name": name} for k, (name, _) in enumerate(colours)]
    images, anns = [], []
    for i in range(n):
        img = np.full((96, 128, 3), 200, np.uint8)
        for cat, (_, colour) in zip(cats, colours):
            x, y = int(rng.randint(0, 80)), int(rng.randint(0, 50))
            img[y : y + 40, x : x + 40] = colour
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": cat["id"],
                    "bbox": [x, y, 40, 40],
                    "area": 1600,
                }
            )
        Image.fromarray(img).save(root / "images" / f"img{i}.png")
        images.append({"id": i + 1, "file_name": f"img{i}.png", "height": 96, "width": 128})
    json_file = root / "user.json"
    json_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return str(json_file), str(root / "images")


@pytest.mark.slow
def test_user_lvis_data_from_a_script(tmp_path):
    from gridclip_d2.data import register_lvis_format

    json_file, images = _write_user_dataset(tmp_path / "data")
    register_lvis_format("test_user_script_data", json_file, images)
    results = train_net.main(
        _args(
            tmp_path / "out",
            "DATASETS.TRAIN",
            "('test_user_script_data',)",
            "DATASETS.TEST",
            "('test_user_script_data',)",
        )
    )
    assert results["open_vocabulary"]["num_base_classes"] == 2
    dets = _raw_detections(tmp_path / "out", "test_user_script_data")
    assert dets and {d["category_id"] for d in dets} <= {10, 20}  # the json's own category ids
    # lvis-api, run here on the written detections against the registered json, gives the AP the
    # training run reported
    from lvis import LVIS, LVISEval, LVISResults

    from gridclip_d2.backports import lvis_numpy_aliases

    gt = LVIS(MetadataCatalog.get("test_user_script_data").json_file)
    lvis_eval = LVISEval(gt, LVISResults(gt, dets, max_dets=300), "bbox")
    with lvis_numpy_aliases():
        lvis_eval.run()
    assert 100 * lvis_eval.get_results()["AP"] == pytest.approx(results["bbox"]["AP"], abs=1e-6)


@pytest.mark.slow
def test_user_split_from_the_command_line_then_demo_and_eval_without_training_images(tmp_path):
    colours = (
        ("red box", (220, 20, 20)),
        ("blue box", (20, 20, 220)),
        ("green box", (20, 200, 20)),
    )
    train_json, train_images = _write_user_dataset(tmp_path / "train", colours)
    test_json, test_images = _write_user_dataset(tmp_path / "test", colours, n=4)
    out = tmp_path / "out"
    _finish(
        _cli(
            out,
            "DATASETS.GRIDCLIP.NAME",
            "mydata",
            "DATASETS.GRIDCLIP.TRAIN_JSON",
            train_json,
            "DATASETS.GRIDCLIP.TRAIN_IMAGES",
            train_images,
            "DATASETS.GRIDCLIP.TEST_JSON",
            test_json,
            "DATASETS.GRIDCLIP.TEST_IMAGES",
            test_images,
            "DATASETS.GRIDCLIP.NOVEL_CLASSES",
            "['green box']",
        )
    )
    log = (out / "log.txt").read_text()
    assert "dropped 6 boxes of its 1 novel classes" in log
    assert (
        "Open-vocabulary summary on mydata_test (trained on mydata_train: 2 base + 1 novel classes)"
        in log
    )
    assert "AP novel" in log
    final = _metrics(out)[-1]
    assert "open_vocabulary/APnovel" in final and "open_vocabulary/APbase" in final
    # The saved config names the vocabulary and the split: it builds the model with no data.
    saved = out / "config.yaml"
    cfg_text = saved.read_text()
    assert "CLASS_NAMES:\n    - red box\n    - blue box\n    - green box" in cfg_text
    assert "mydata_train" in cfg_text and "NOVEL_CLASSES:\n    - green box" in cfg_text

    shutil.rmtree(train_images)  # the training images are gone
    weights = str(out / "model_final.pth")
    demo_out = tmp_path / "drawn"
    demo.main(
        [
            "--config-file",
            str(saved),
            "--input",
            os.path.join(test_images, "img0.png"),
            "--output",
            str(demo_out),
            "--custom-vocabulary",
            "green box,red box",
            "--confidence-threshold",
            "0",
            "--opts",
            "MODEL.WEIGHTS",
            weights,
        ]
    )
    assert (demo_out / "img0.png").is_file()
    # Without a vocabulary the demo labels with the model's own (the training classes).
    vis = demo.VisualizationDemo(
        demo.setup_cfg(
            demo.get_parser().parse_args(
                ["--config-file", str(saved), "--input", "x", "--opts", "MODEL.WEIGHTS", weights]
            )
        )
    )
    assert vis.class_names == ["red box", "blue box", "green box"]
    assert vis.predictor.model.image_alignment is None  # no teacher at inference

    results = train_net.main(
        train_net.default_argument_parser().parse_args(
            [
                "--config-file",
                str(saved),
                "--eval-only",
                "MODEL.WEIGHTS",
                weights,
                "OUTPUT_DIR",
                str(tmp_path / "eval"),
            ]
        )
    )
    assert results["open_vocabulary"]["num_novel_classes"] == 1
    assert results["open_vocabulary"]["APnovel"] == pytest.approx(
        final["open_vocabulary/APnovel"], nan_ok=True
    )
