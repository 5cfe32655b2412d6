"""The report of ``tools/benchmark.py``: pure functions of its records (one dict per model and
input size, see that script's docstring), with no timing and no model.

* :data:`COLUMNS` and :func:`markdown_table`: the main table (one row per record);
* :func:`add_ratios`: each record's ratios to the same size's :data:`REFERENCE` (Faster R-CNN);
* :func:`stages_table`: the time per stage; :func:`interleaved_table`: the latencies timed in
  turns; :func:`embedded_table`: the embedded default's training step;
* :func:`plot`: a bar chart of the latencies (PNG, matplotlib).
"""

import os
from typing import List, Optional

REFERENCE = "faster_rcnn_r50_fpn"  # the ratios' denominator: the two-stage alternative

COLUMNS = [  # (header, record key, format)
    ("model", "model", "{}"),
    ("size", "size", "{0[0]}x{0[1]}"),
    ("dtype", "dtype", "{}"),
    ("latency ms (median)", "latency_ms_median", "{:.1f}"),
    ("min-max ms", "latency_ms_min", None),
    ("x Faster R-CNN", "latency_ratio_to_faster_rcnn", "{:.2f}"),
    ("x float32", "latency_ratio_to_float32", "{:.2f}"),
    ("images/s (batch)", "images_per_s", None),
    ("detections", "detections", "{}"),
    ("train step s", "train_step_s", "{:.3f}"),
    ("train step s, cached teacher / no image align", "train_step_cached_teacher_s", None),
    ("peak memory MB", "peak_memory_mb", "{:.0f}"),
    ("GFLOPs", "gflops", "{:.1f}"),
    ("achieved GFLOP/s (% of matmul peak)", "achieved_gflops_per_s", None),
    ("teacher s per training image (crops)", "teacher_s_per_image", None),
]


def _cell(rec: dict, key: str, fmt: Optional[str]) -> str:
    """The table cell of column ``key`` (``fmt``: its format, None for the composite cells)."""
    if key == "dtype":
        return _dtype(rec)
    if key == "latency_ms_min":
        return f"{rec['latency_ms_min']:.0f}-{rec['latency_ms_max']:.0f}"
    if key == "images_per_s":
        return f"{rec['images_per_s']:.2f} ({rec['batch']})"
    if key == "train_step_cached_teacher_s":
        if key not in rec:
            return "-"
        return f"{rec[key]:.3f} / {rec['train_step_no_image_align_s']:.3f}"
    if key == "achieved_gflops_per_s":
        if rec.get("achieved_fraction_of_matmul_peak") is None:  # bfloat16: no float32 peak
            return f"{rec[key]:.1f}"
        return f"{rec[key]:.1f} ({100 * rec['achieved_fraction_of_matmul_peak']:.0f}%)"
    if key == "teacher_s_per_image":
        return f"{rec[key]:.3f} ({rec['teacher_crops_per_image']})" if key in rec else "-"
    return fmt.format(rec[key]) if key in rec else "-"


def _dtype(rec: dict) -> str:
    return rec.get("dtype", "float32")  # records of runs before --dtype are float32


def find_record(records: List[dict], model: str, rec: dict, dtype: str) -> Optional[dict]:
    """The record of ``model`` at ``rec``'s size in ``dtype``, or None."""
    return next(
        (
            r
            for r in records
            if r["model"] == model and r["size"] == rec["size"] and _dtype(r) == dtype
        ),
        None,
    )


def add_ratios(records: List[dict]) -> None:
    """``latency_ratio_to_faster_rcnn`` (and train / teacher ratios) against the same size and
    dtype's Faster R-CNN record, and a bfloat16 record's ``latency_ratio_to_float32`` against the
    same model's float32 record, when they were measured."""
    for rec in records:
        if _dtype(rec) != "float32":
            fp32 = find_record(records, rec["model"], rec, "float32")
            if fp32 is not None:
                rec["latency_ratio_to_float32"] = round(
                    rec["latency_ms_median"] / fp32["latency_ms_median"], 3
                )
        ref = find_record(records, REFERENCE, rec, _dtype(rec))
        if ref is None:
            continue
        rec["latency_ratio_to_faster_rcnn"] = round(
            rec["latency_ms_median"] / ref["latency_ms_median"], 3
        )
        if "train_step_s" in rec and "train_step_s" in ref:
            rec["train_step_ratio_to_faster_rcnn"] = round(
                rec["train_step_s"] / ref["train_step_s"], 3
            )
        if "teacher_s_per_image" in rec:
            rec["teacher_ratio_to_faster_rcnn"] = round(
                rec["teacher_s_per_image"] / ref["teacher_s_per_image"], 4
            )


def markdown_table(records: List[dict]) -> str:
    """The main table, one row per record (the Faster R-CNN ratio only when it was measured)."""
    optional = ("latency_ratio_to_faster_rcnn", "latency_ratio_to_float32")
    cols = [c for c in COLUMNS if c[1] not in optional or any(c[1] in r for r in records)]
    lines = ["| " + " | ".join(c[0] for c in cols) + " |", "|" + "---|" * len(cols)]
    for rec in records:
        lines.append("| " + " | ".join(_cell(rec, key, fmt) for _, key, fmt in cols) + " |")
    return "\n".join(lines)


def stages_table(records: List[dict]) -> str:
    """Median ms per stage, one row per record."""
    lines = ["| model | size | dtype | time per stage, ms (median) |", "|---|---|---|---|"]
    for rec in records:
        stages = ", ".join(f"{k} {v:.0f}" for k, v in rec["stages_ms"].items())
        lines.append(
            f"| {rec['model']} | {rec['size'][0]}x{rec['size'][1]} | {_dtype(rec)} | {stages} |"
        )
    return "\n".join(lines)


def interleaved_table(rows: List[dict]) -> str:
    """The latencies timed in turns (``tools/benchmark.py --interleaved``): median and min-max ms,
    and the median (min-max) over rounds of each round's ratios."""

    def ratio(row: dict, key: str) -> str:
        if key not in row:
            return "-"
        lo, hi = row[key + "_min_max"]
        return f"{row[key]:.2f} ({lo:.2f}-{hi:.2f})"

    lines = [
        "| model | size | dtype | rounds | latency ms (median) | min-max ms | x Faster R-CNN, "
        "per round: median (min-max) | x float32, per round |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['size'][0]}x{row['size'][1]} | {row['dtype']} | "
            f"{row['rounds']} | {row['latency_ms_median']:.1f} | "
            f"{row['latency_ms_min']:.0f}-{row['latency_ms_max']:.0f} | "
            f"{ratio(row, 'ratio_to_faster_rcnn')} | {ratio(row, 'ratio_to_float32')} |"
        )
    return "\n".join(lines)


def embedded_table(rec: dict) -> str:
    """The embedded default's training step: teacher on the fly, cached, no image alignment."""
    return "\n".join(
        [
            "| embedded default training step (batch %d, %dx%d) | s | vs no image align |"
            % (rec["batch"], rec["size"][0], rec["size"][1]),
            "|---|---|---|",
            f"| image-level alignment, teacher on the fly | {rec['train_step_s']:.3f} | "
            f"{100 * rec['teacher_on_the_fly_overhead']:+.0f}% |",
            f"| image-level alignment, cached teacher | {rec['train_step_cached_teacher_s']:.3f} | "
            f"{100 * rec['cached_teacher_overhead']:+.0f}% |",
            f"| no image-level alignment | {rec['train_step_no_image_align_s']:.3f} | |",
        ]
    )


def plot(records: List[dict], path: str, machine: str) -> None:
    """A PNG at ``path``: median latency (min-max bars, log scale) per model, one panel per size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({tuple(r["size"]) for r in records})
    rows = max(sum(tuple(r["size"]) == size for r in records) for size in sizes)
    fig, axes = plt.subplots(
        1, len(sizes), figsize=(5.5 * len(sizes), 1.0 + 0.32 * rows), squeeze=False
    )
    for ax, size in zip(axes[0], sizes):
        recs = [r for r in records if tuple(r["size"]) == size]
        names = [r["model"] + ("" if _dtype(r) == "float32" else f" ({_dtype(r)})") for r in recs]
        ms = [r["latency_ms_median"] for r in recs]
        err = [
            [m - r["latency_ms_min"] for m, r in zip(ms, recs)],
            [r["latency_ms_max"] - m for m, r in zip(ms, recs)],
        ]
        ax.barh(
            names, ms, xerr=err, color=["C0" if "gridclip" in r["model"] else "C7" for r in recs]
        )
        ax.invert_yaxis()  # the table's order, top to bottom
        ax.set_xscale("log")
        ax.set_xlabel("ms per image (median, min-max)")
        ax.set_title(f"{size[0]}x{size[1]}, 1203 classes", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(machine, fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
