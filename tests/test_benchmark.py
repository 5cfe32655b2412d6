"""tools/benchmark.py: the --quick run has every column and sane values; bad flags are named."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "tools", "benchmark.py")
sys.path.insert(0, os.path.join(REPO, "tools"))

import benchmark  # noqa: E402

from gridclip_d2.modeling.cpu_bf16 import cpu_bf16_units  # noqa: E402

RECORD_KEYS = [
    "model",
    "size",
    "dtype",
    "latency_ms_median",
    "latency_ms_min",
    "latency_ms_max",
    "images_per_s",
    "detections",
    "train_step_s",
    "peak_memory_mb",
    "gflops",
    "achieved_gflops_per_s",
    "latency_ratio_to_faster_rcnn",
    "stages_ms",
]
GRIDCLIP_KEYS = [
    "train_step_cached_teacher_s",
    "train_step_no_image_align_s",
    "teacher_s_per_image",
]


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--models", "gridclip_r50_fpn,yolo"], "--models"),
        (["--models", ","], "--models"),
        (["--size", "0", "640"], "--size"),
        (["--size", "640", "99999"], "--size"),
        (["--amp", "--device", "cpu"], "--amp"),
        (["--dtype", "fp16"], "--dtype"),
        (["--dtype", ","], "--dtype"),
    ],
)
def test_bad_flags_are_named(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        benchmark.parse_args(argv)
    assert e.value.code == 2
    assert flag in capsys.readouterr().err


# GridCLIP and its baseline (every ratio is to Faster R-CNN); the BiFPN and RetinaNet rows are
# measured by the same code (the BiFPN config is built in test_gridclip_shipped_configs.py)
TIMED = ("gridclip_r50_fpn", "faster_rcnn_r50_fpn")
# bfloat16 beside float32 where this CPU has the units (the records then carry both)
DTYPES = ("float32", "bfloat16") if cpu_bf16_units() is not None else ("float32",)


def test_bf16_without_units_is_refused(monkeypatch, capsys):
    import gridclip_d2.modeling.cpu_bf16 as cpu_bf16

    monkeypatch.setattr(cpu_bf16, "cpu_bf16_units", lambda: None)
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--dtype", "fp32,bf16"])
    assert "--dtype bf16: this CPU has neither AMX nor AVX-512 BF16" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_run_has_every_column(tmp_path):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    proc = subprocess.run(
        [
            sys.executable,
            SCRIPT,
            "--quick",
            "--models",
            ",".join(TIMED),
            "--threads",
            "2",
            "--dtype",
            ",".join({"float32": "fp32", "bfloat16": "bf16"}[d] for d in DTYPES),
            "--interleaved",
            "2",
            "--json",
            str(out_json),
            "--plot",
            str(out_png),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for header, key, _ in benchmark.COLUMNS:
        if key != "latency_ratio_to_float32" or len(DTYPES) > 1:
            assert f" {header} |" in proc.stdout, header
    assert "cached teacher" in proc.stdout and "teacher on the fly" in proc.stdout
    assert out_png.stat().st_size > 1000

    result = json.loads(out_json.read_text())
    assert result["machine"] and result["matmul_peak_gflops_per_s"] > 0
    records = {r["model"]: r for r in result["models"] if r["dtype"] == "float32"}
    assert sorted(records) == sorted(TIMED)
    bf16 = [r for r in result["models"] if r["dtype"] == "bfloat16"]
    assert sorted(r["model"] for r in bf16) == (sorted(TIMED) if len(DTYPES) > 1 else [])
    for rec in bf16:  # its inference timed beside float32's, like for like
        assert rec["detections"] > 0 and rec["latency_ms_median"] > 0
        assert rec["latency_ratio_to_float32"] == pytest.approx(
            rec["latency_ms_median"] / records[rec["model"]]["latency_ms_median"], rel=1e-2
        )
        assert "train_step_s" not in rec
    for name, rec in records.items():
        for key in RECORD_KEYS + (GRIDCLIP_KEYS if name.startswith("gridclip") else []):
            assert key in rec, (name, key)
        assert rec["size"] == list(benchmark.QUICK_SIZE)
        assert rec["latency_ms_min"] <= rec["latency_ms_median"] <= rec["latency_ms_max"]
        for key in [
            "latency_ms_min",
            "images_per_s",
            "train_step_s",
            "peak_memory_mb",
            "gflops",
            "achieved_gflops_per_s",
        ]:
            assert rec[key] > 0, (name, key)
        assert rec["detections"] > 0, name
    assert records["faster_rcnn_r50_fpn"]["latency_ratio_to_faster_rcnn"] == 1.0
    assert records["faster_rcnn_r50_fpn"]["teacher_crops_per_image"] == benchmark.VILD_CROPS
    # the teacher runs on 14 crops (grids 1, 2, 3) instead of 300: far cheaper per training image
    fpn = records["gridclip_r50_fpn"]
    assert fpn["teacher_crops_per_image"] == 14
    assert fpn["teacher_s_per_image"] < records["faster_rcnn_r50_fpn"]["teacher_s_per_image"]
    # the same models timed in turns: one row per model and dtype, ratios per round
    turns = {(r["model"], r["dtype"]): r for r in result["interleaved"]}
    assert sorted(turns) == sorted((m, d) for m in TIMED for d in DTYPES)
    assert "per round" in proc.stdout
    for (name, dtype), row in turns.items():
        assert row["rounds"] == 2 and row["latency_ms_min"] <= row["latency_ms_max"]
        assert ("ratio_to_faster_rcnn" in row) == (name != "faster_rcnn_r50_fpn")
        assert ("ratio_to_float32" in row) == (dtype == "bfloat16")
        for key in ("ratio_to_faster_rcnn", "ratio_to_float32"):
            if key in row:
                lo, hi = row[key + "_min_max"]
                assert 0 < lo <= row[key] <= hi
    embedded = result["embedded_default_train"]
    assert embedded["batch"] == 8 and embedded["size"] == [256, 256]
    for key in ["train_step_s", "train_step_cached_teacher_s", "train_step_no_image_align_s"]:
        assert embedded[key] > 0


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="this checks the message without a GPU"
)
def test_gpu_script_without_a_gpu_says_so_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", os.path.join(REPO, "tools", "benchmark_gpu.sh")],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHON=sys.executable, OUT=str(out)),
        timeout=120,
    )
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr and "tools/benchmark.py" in proc.stderr
    assert not out.exists()
