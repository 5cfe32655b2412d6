#!/usr/bin/env python
"""The ablation table of the embedded open-vocabulary default: what each part of GridCLIP buys.

    python tools/ablate.py                          # the default rows, seeds 0,1,2
    python tools/ablate.py --rows full,no_align     # some rows
    python tools/ablate.py --jobs 2                 # two runs at a time (one thread each)
    python tools/ablate.py --quick                  # a few iterations per run (a smoke test)

Each run is ``train_net.py --config-file configs/GridCLIP_synthetic.yaml`` with the row's
``KEY VALUE`` overrides, in its own process and output folder (``<out>/<row>_seed<k>/``),
evaluated on ``synthetic_val`` and ``synthetic_test``; each split's AP per class group (base,
novel-compositional, novel-concept), AP novel and AP are read from the run's ``metrics.json``.
Runs that already finished are reused, so an interrupted ablation continues where it stopped.
Every row runs with every ``--seeds`` value; mean ± standard deviation over seeds.

Two tables: **test** (the held-out split: the numbers to report) and **val** (where every choice of
the default config is made; a choice read off the test table would make it a second validation
set).

Output: markdown on stdout and in ``<out>/ablation.md``, the numbers in ``<out>/ablation.json``.
"""

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "GridCLIP_synthetic.yaml")
SPLITS = ("synthetic_test", "synthetic_val")  # reported, chosen on
METRICS = ("AP-base", "AP-novel-compositional", "AP-novel-concept", "APnovel", "AP")
_ALIGN = "MODEL.GRIDCLIP.IMAGE_ALIGN."

# name -> (description, overrides relative to configs/GridCLIP_synthetic.yaml)
ROWS: Dict[str, Tuple[str, List[str]]] = {
    "full": (
        "the default: the detector's top-10 proposals, losses weighted by novelty, weight 0.15",
        [],
    ),
    "no_align": (
        "without image-level alignment (ViLD-text's analogue)",
        [_ALIGN + "ENABLED", "False"],
    ),
    "grids": (
        "alignment regions: the whole image and its 2x2 grid crops (weight 0.1)",
        [_ALIGN + "REGIONS", "grids", _ALIGN + "GRIDS", "[1, 2]", _ALIGN + "LOSS_WEIGHT", "0.1"],
    ),
    "align_w005": ("image-level alignment weight 0.05", [_ALIGN + "LOSS_WEIGHT", "0.05"]),
    "align_w05": ("image-level alignment weight 0.5", [_ALIGN + "LOSS_WEIGHT", "0.5"]),
    "unweighted": (
        "proposals' losses not weighted by novelty (weight 0.1)",
        [_ALIGN + "WEIGHT_BY_NOVELTY", "False", _ALIGN + "LOSS_WEIGHT", "0.1"],
    ),
    "random_clip": (
        "random CLIP, no pretraining (trainable BN; the floor)",
        ["MODEL.CLIP.WEIGHTS", "", "MODEL.CLIP.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", "0"],
    ),
    "dense_clip": (
        "dense CLIP embedding added on p3-p5 (default off)",
        ["MODEL.GRIDCLIP.DENSE_CLIP_LEVELS", "['p3','p4','p5']"],
    ),
    "embed_clip": (
        "grid-embedding projection initialised from CLIP's attention-pool v/c "
        "projections (default random)",
        ["MODEL.GRIDCLIP.EMBED_INIT", "clip"],
    ),
    "fixed_temp": (
        "temperature fixed at 50 (default learned)",
        ["MODEL.GRIDCLIP.LEARN_TEMPERATURE", "False"],
    ),
    "embed_1x1": (
        "1x1 grid-embedding conv (default 3x3; a lighter head)",
        ["MODEL.GRIDCLIP.EMBED_KERNEL_SIZE", "1"],
    ),
    "towers_1": (
        "1 conv per tower (default 2; a lighter head)",
        ["MODEL.GRIDCLIP.NUM_CONVS", "1"],
    ),
    "light_head": (
        "1x1 grid-embedding conv and 1 conv per tower (a lighter head)",
        ["MODEL.GRIDCLIP.EMBED_KERNEL_SIZE", "1", "MODEL.GRIDCLIP.NUM_CONVS", "1"],
    ),
    "ensemble": (
        'prompt ensemble at training and inference (default: one prompt "a {}")',
        ["MODEL.GRIDCLIP.PROMPT_ENSEMBLE", "True"],
    ),
}
# what the README reports: the default, no alignment, the other region mode, two other weights,
# the floor
DEFAULT_ROWS = ("full", "no_align", "grids", "align_w005", "align_w05", "random_clip")
QUICK = [  # a smoke test: a few iterations on small images
    "SOLVER.IMS_PER_BATCH",
    "2",
    "INPUT.MIN_SIZE_TRAIN",
    "(128,)",
    "INPUT.MAX_SIZE_TRAIN",
    "128",
    "INPUT.MIN_SIZE_TEST",
    "128",
    "INPUT.MAX_SIZE_TEST",
    "128",
    "SOLVER.MAX_ITER",
    "6",
    "SOLVER.STEPS",
    "(4,)",
    "SOLVER.WARMUP_ITERS",
    "2",
    "SOLVER.CHECKPOINT_PERIOD",
    "1000",
]


def run_dir(out: str, row: str, seed: int) -> str:
    return os.path.join(out, f"{row}_seed{seed}")


def read_result(folder: str) -> Optional[dict]:
    """``{split: {metric: value}}`` of a finished run (the last metrics.json row that has every
    split's open-vocabulary summary), or None."""
    path = os.path.join(folder, "metrics.json")
    if not os.path.isfile(path):
        return None
    found = None
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if all(f"{split}/open_vocabulary/AP" in row for split in SPLITS):
                found = row
    if found is None:
        return None
    return {
        split: {m: found.get(f"{split}/open_vocabulary/{m}", float("nan")) for m in METRICS}
        for split in SPLITS
    }


def train_command(row: str, seed: int, out: str, quick: bool) -> List[str]:
    return (
        [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", CONFIG, "--resume"]
        + ROWS[row][1]
        + ["DATASETS.TEST", str(SPLITS), "SEED", str(seed), "OUTPUT_DIR", run_dir(out, row, seed)]
        + ["SOLVER.PLOT_CURVES", "False"]
        + (QUICK if quick else [])
    )


def run_one(row: str, seed: int, out: str, quick: bool, threads: int) -> dict:
    folder = run_dir(out, row, seed)
    result = read_result(folder)
    if result is not None:
        return dict(result, row=row, seed=seed, seconds=None, reused=True)
    os.makedirs(folder, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = train_command(row, seed, out, quick)
    start = time.time()
    with open(os.path.join(folder, "stdout.txt"), "w") as log:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(
            f"run {row} seed {seed} failed (exit {proc.returncode}); see "
            f"{os.path.join(folder, 'stdout.txt')}\n  {shlex.join(cmd)}"
        )
    result = read_result(folder)
    if result is None:
        raise RuntimeError(
            f"run {row} seed {seed} finished without an open-vocabulary summary in "
            f"{os.path.join(folder, 'metrics.json')}"
        )
    return dict(result, row=row, seed=seed, seconds=time.time() - start, reused=False)


def _stat(values: Sequence[float]) -> str:
    """mean ± sample standard deviation (n - 1), or the value alone for one seed."""
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.1f} ± {std:.1f}"


def format_table(results: List[dict], rows: Sequence[str], split: str) -> str:
    head = "| row | setting | seeds | AP base | AP novel-compositional | AP novel-concept "
    lines = [head + "| AP novel | AP |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        rs = [r for r in results if r["row"] == row]
        if not rs:
            continue
        seeds = ",".join(str(r["seed"]) for r in rs)
        cells = " | ".join(_stat([r[split][m] for r in rs]) for m in METRICS)
        lines.append(f"| {row} | {ROWS[row][0]} | {seeds} | {cells} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows", default=",".join(DEFAULT_ROWS), help=f"comma list of {list(ROWS)}"
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma list: every row runs each")
    parser.add_argument("--out", default=os.path.join(REPO, "output", "ablation"))
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per run (default: the CPU count / --jobs)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a few iterations per run (smoke test)"
    )
    args = parser.parse_args(argv)

    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown or not rows:
        parser.error(f"--rows: unknown {unknown}; choose from {list(ROWS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds must be a comma list of integers, got {args.seeds!r}")
    if not seeds or args.jobs < 1:
        parser.error("need at least one seed and --jobs >= 1")
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    runs = [(row, s) for row in rows for s in seeds]
    os.makedirs(args.out, exist_ok=True)
    print(
        f"{len(runs)} runs into {args.out} ({args.jobs} at a time, {threads} threads each)",
        flush=True,
    )

    results, start = [], time.time()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_one, row, s, args.out, args.quick, threads) for row, s in runs]
        for i, fut in enumerate(futures, start=1):
            r = fut.result()
            results.append(r)
            elapsed = time.time() - start
            eta = elapsed / i * (len(runs) - i)
            took = "reused" if r["reused"] else f"{r['seconds']:.0f} s"
            t = r["synthetic_test"]
            print(
                f"[{i}/{len(runs)}] {r['row']} seed {r['seed']} (test): "
                + " ".join(f"{m} {t[m]:.1f}" for m in METRICS)
                + f" ({took}; ETA {eta / 60:.0f} min)",
                flush=True,
            )

    command = "python tools/ablate.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    text = (
        "Ablation of configs/GridCLIP_synthetic.yaml: lvis-api box AP, mean ± standard deviation "
        "over seeds.\n\n**synthetic_test** (held out; the reported numbers):\n\n"
        f"{format_table(results, rows, 'synthetic_test')}\n\n"
        "**synthetic_val** (where the default's settings are chosen):\n\n"
        f"{format_table(results, rows, 'synthetic_val')}\n\nMade by: `{command.strip()}`\n"
    )
    with open(os.path.join(args.out, "ablation.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "ablation.json"), "w") as f:
        json.dump({"rows": {r: ROWS[r][0] for r in rows}, "results": results}, f, indent=1)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
