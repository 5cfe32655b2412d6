#!/usr/bin/env python
"""The ablation table of the embedded open-vocabulary default: what each part of GridCLIP buys.

    python tools/ablate.py                          # every row -> output/ablation/ablation.md
    python tools/ablate.py --rows full,no_align     # some rows
    python tools/ablate.py --jobs 2                 # two runs at a time (one thread each)
    python tools/ablate.py --quick                  # a few iterations per run (a smoke test)

Each run is ``train_net.py --config-file configs/GridCLIP_synthetic.yaml`` with the row's
``KEY VALUE`` overrides, in its own process and output folder (``<out>/<row>_seed<k>/``), then its
APbase / APnovel / AP are read from the run's ``metrics.json``. Runs that already finished are
reused, so an interrupted ablation continues where it stopped. The main rows (``full``,
``no_align``) run with every ``--seeds`` value; mean and spread (max - min) are reported.

Output: a markdown table on stdout and in ``<out>/ablation.md``, the numbers in
``<out>/ablation.json``.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "GridCLIP_synthetic.yaml")

# name -> (description, overrides relative to configs/GridCLIP_synthetic.yaml)
ROWS: Dict[str, Tuple[str, List[str]]] = {
    "full": ("full model (the default config; image-level alignment weight 0.1)", []),
    "no_align": ("without image-level alignment", ["MODEL.GRIDCLIP.IMAGE_ALIGN.ENABLED", "False"]),
    "align_w05": (
        "image-level alignment weight 0.5",
        ["MODEL.GRIDCLIP.IMAGE_ALIGN.LOSS_WEIGHT", "0.5"],
    ),
    "align_w1": (
        "image-level alignment weight 1.0",
        ["MODEL.GRIDCLIP.IMAGE_ALIGN.LOSS_WEIGHT", "1.0"],
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
    "ensemble": (
        'prompt ensemble at training and inference (default: one prompt "a {}")',
        ["MODEL.GRIDCLIP.PROMPT_ENSEMBLE", "True"],
    ),
    "random_clip": (
        "random CLIP, no pretraining (trainable BN; the floor)",
        ["MODEL.CLIP.WEIGHTS", "", "MODEL.CLIP.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", "0"],
    ),
}
MAIN_ROWS = ("full", "no_align")
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
    """APbase / APnovel / AP of a finished run (the last metrics.json row that has them)."""
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
            if "open_vocabulary/APnovel" in row:
                found = row
    if found is None:
        return None
    return {
        "APbase": found["open_vocabulary/APbase"],
        "APnovel": found["open_vocabulary/APnovel"],
        "AP": found["open_vocabulary/AP"],
    }


def train_command(row: str, seed: int, out: str, quick: bool) -> List[str]:
    return (
        [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", CONFIG, "--resume"]
        + ROWS[row][1]
        + ["SEED", str(seed), "OUTPUT_DIR", run_dir(out, row, seed), "SOLVER.PLOT_CURVES", "False"]
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
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {(max(values) - min(values)) / 2:.1f}"


def format_table(results: List[dict], rows: Sequence[str]) -> str:
    lines = ["| row | setting | seeds | APbase | APnovel | AP |", "|---|---|---|---|---|---|"]
    for row in rows:
        rs = [r for r in results if r["row"] == row]
        if not rs:
            continue
        seeds = ",".join(str(r["seed"]) for r in rs)
        lines.append(
            f"| {row} | {ROWS[row][0]} | {seeds} | {_stat([r['APbase'] for r in rs])} | "
            f"{_stat([r['APnovel'] for r in rs])} | {_stat([r['AP'] for r in rs])} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma list of {list(ROWS)}")
    parser.add_argument("--seeds", default="0,1", help="seeds of the main rows (full, no_align)")
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
    runs = [(row, s) for row in rows for s in (seeds if row in MAIN_ROWS else seeds[:1])]
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
            print(
                f"[{i}/{len(runs)}] {r['row']} seed {r['seed']}: APbase {r['APbase']:.1f} "
                f"APnovel {r['APnovel']:.1f} AP {r['AP']:.1f} ({took}; ETA {eta / 60:.0f} min)",
                flush=True,
            )

    table = format_table(results, rows)
    command = "python tools/ablate.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    text = (
        f"Ablation of configs/GridCLIP_synthetic.yaml (lvis-api box AP on synthetic_val; "
        f"mean ± half the range over seeds)\n\n{table}\n\nMade by: `{command.strip()}`\n"
    )
    with open(os.path.join(args.out, "ablation.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "ablation.json"), "w") as f:
        json.dump({"rows": {r: ROWS[r][0] for r in rows}, "results": results}, f, indent=1)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
