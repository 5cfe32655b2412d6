#!/usr/bin/env python
"""AP of the embedded default when each class is queried by one example image instead of its name.

    python tools/ablate.py --rows full,no_align --seeds 0,1,2        # the trained runs
    python tools/exemplar_ap.py --runs output/ablation --rows full,no_align --seeds 0,1,2

For every run ``<runs>/<row>_seed<k>/`` (its ``config.yaml`` and ``model_final.pth``), the model
is evaluated on ``synthetic_test`` (the held-out split; lvis-api through the project's evaluator)
twice: every class by its **name** (its CLIP text embedding, as training evaluates), and every
class by **example** (the CLIP image embedding of one box of that class, the row of
``GridCLIPPredictor.set_vocabulary`` with ``ImageExemplar`` entries). The examples are boxes of the
*training* images (``synthetic_train_full.json``: the training images with every box, the novel
ones the detector never saw as boxes), drawn at random with the run's seed (``--shots`` per
class, averaged), never a test image. AP per class group (base, novel-compositional,
novel-concept); mean ± standard deviation over the runs of a row.

Nothing here is chosen on the test split: the example draw is uniform over the training boxes, the
rows are the runs as trained. Output: markdown on stdout and in ``<out>/exemplar_ap.md``, numbers
in ``<out>/exemplar_ap.json``.
"""

import gridclip_d2.library_warnings  # noqa: F401  (first: quiets the libraries' warnings)

import argparse
import json
import logging
import math
import os
import sys
from typing import Dict, List, Sequence

import numpy as np

from detectron2.data import MetadataCatalog
from detectron2.utils.logger import setup_logger

from gridclip_d2 import GridCLIPPredictor
from gridclip_d2.atomic_write import atomic_json_dump
from gridclip_d2.data.synthetic import synthetic_dir
from gridclip_d2.engine import setup_cfg
from gridclip_d2.engine.trainer import Trainer
from gridclip_d2.vocabulary import ImageExemplar

TEST = "synthetic_test"
GROUPS = ("base", "novel-compositional", "novel-concept")
QUERIES = ("name", "example")
logger = logging.getLogger("gridclip_d2.exemplar_ap")


def training_examples(classes: Sequence[str], seed: int, shots: int = 1) -> List[ImageExemplar]:
    """``shots`` boxes of each class drawn uniformly (``seed``) from the training images
    (synthetic_train_full.json: every box of the training images), as ImageExemplar entries named
    by the class, in the order of ``classes``."""
    root = synthetic_dir()
    path = os.path.join(root, "annotations", "synthetic_train_full.json")
    with open(path) as f:
        data = json.load(f)
    by_name = {c["name"]: c["id"] for c in data["categories"]}
    images = {im["id"]: im for im in data["images"]}
    boxes: Dict[int, list] = {}
    for ann in sorted(data["annotations"], key=lambda a: a["id"]):
        boxes.setdefault(ann["category_id"], []).append(ann)
    rng = np.random.RandomState(seed)
    examples = []
    for name in classes:
        if name not in by_name or not boxes.get(by_name[name]):
            raise ValueError(f"{path}: no training box of class {name!r} to take an example from")
        candidates = boxes[by_name[name]]
        for i in rng.choice(len(candidates), size=min(shots, len(candidates)), replace=False):
            ann = candidates[int(i)]
            x, y, w, h = ann["bbox"]
            image = os.path.join(root, images[ann["image_id"]]["file_name"])
            examples.append(ImageExemplar(name, image, (x, y, x + w, y + h)))
    return examples


def evaluate_run(folder: str, seed: int, shots: int) -> Dict[str, Dict[str, float]]:
    """``{query: {"AP-<group>": AP, "AP": AP}}`` of the run in ``folder`` on the test split."""
    weights = os.path.join(folder, "model_final.pth")
    config = os.path.join(folder, "config.yaml")
    for path in (config, weights):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--runs: {path} not found (train the run first)")
    opts = ["DATASETS.TEST", f"('{TEST}',)", "OUTPUT_DIR", os.path.join(folder, "exemplar_ap")]
    cfg = setup_cfg(config, opts, mode="eval", overrides=["MODEL.WEIGHTS", weights])
    predictor = GridCLIPPredictor(cfg)
    classes = list(MetadataCatalog.get(TEST).thing_classes)
    results = {}
    for query in QUERIES:
        if query == "name":
            predictor.set_vocabulary(classes)
        else:
            predictor.set_vocabulary(training_examples(classes, seed, shots))
        assert predictor.vocabulary == classes
        summary = Trainer.test(cfg, predictor.model)["open_vocabulary"]
        results[query] = {k: summary[k] for k in ["AP"] + [f"AP-{g}" for g in GROUPS]}
        logger.info(f"{folder} by {query}: {results[query]}")
    return results


def _stat(values: Sequence[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.1f} ± {std:.1f}"


def format_table(results: Dict[str, Dict[int, dict]], seeds: Sequence[int]) -> str:
    lines = [
        "| run | classes queried by | seeds | AP base | AP novel-compositional | "
        "AP novel-concept | AP |",
        "|---|---|---|---|---|---|---|",
    ]
    for row, runs in results.items():
        for query in QUERIES:
            cells = [_stat([runs[s][query][f"AP-{g}"] for s in seeds if s in runs]) for g in GROUPS]
            cells.append(_stat([runs[s][query]["AP"] for s in seeds if s in runs]))
            done = ",".join(str(s) for s in seeds if s in runs)
            lines.append(f"| {row} | {query} | {done} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="output/ablation", help="tools/ablate.py's --out")
    parser.add_argument("--rows", default="full,no_align", help="comma-separated ablation rows")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of the runs")
    parser.add_argument("--shots", type=int, default=1, help="examples per class (averaged)")
    parser.add_argument("--out", default=None, help="folder of the table (default: --runs)")
    args = parser.parse_args(argv)
    if args.shots < 1:
        parser.error(f"--shots must be >= 1, got {args.shots}")
    setup_logger(name="gridclip_d2")
    logging.getLogger("gridclip_d2.engine").setLevel(logging.WARNING)
    logging.getLogger("d2").setLevel(logging.WARNING)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    results: Dict[str, Dict[int, dict]] = {}
    for row in rows:
        results[row] = {}
        for seed in seeds:
            folder = os.path.join(args.runs, f"{row}_seed{seed}")
            results[row][seed] = evaluate_run(folder, seed, args.shots)
    table = format_table(results, seeds)
    command = "python tools/exemplar_ap.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = args.out or args.runs
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "exemplar_ap.md"), "w") as f:
        f.write(f"{table}\n\nMade by: `{command.strip()}`\n")
    atomic_json_dump(
        {
            "shots": args.shots,
            "results": {r: {str(s): v for s, v in d.items()} for r, d in results.items()},
        },
        os.path.join(out, "exemplar_ap.json"),
    )
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
