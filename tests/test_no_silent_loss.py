"""Nothing finished is lost and nothing wrong passes silently: training refuses an OUTPUT_DIR
holding an earlier run unless --resume or --overwrite says what is meant; --eval-only refuses an
empty MODEL.WEIGHTS; the demo fails when none of its inputs is an image."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import train_net  # noqa: E402

CONFIG = os.path.join(REPO, "configs", "GridCLIP_synthetic.yaml")
TINY = [
    *("SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1"),
    *("SOLVER.STEPS", "(100,)", "SOLVER.CHECKPOINT_PERIOD", "1000", "DATASETS.TEST", "()"),
    *("INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128"),
]


def _args(out, *flags):
    return train_net.default_argument_parser().parse_args(
        ["--config-file", CONFIG, *flags, *TINY, "OUTPUT_DIR", str(out)]
    )


@pytest.mark.slow
def test_a_finished_run_is_never_trained_over_without_asking(tmp_path):
    train_net.main(_args(tmp_path))
    final = tmp_path / "model_final.pth"
    before, written = final.read_bytes(), final.stat().st_mtime_ns
    metrics_before = (tmp_path / "metrics.json").read_text()
    config_before = (tmp_path / "config.yaml").read_text()
    with pytest.raises(FileExistsError) as e:
        train_net.main(_args(tmp_path))
    message = str(e.value)
    assert str(final) in message and "--resume" in message and "--overwrite" in message
    # nothing of the finished run was touched
    assert final.read_bytes() == before
    assert (tmp_path / "metrics.json").read_text() == metrics_before
    assert (tmp_path / "config.yaml").read_text() == config_before
    assert final.stat().st_mtime_ns == written
    # --overwrite says it: a new run replaces the old one (the same bytes: training is
    # deterministic on one machine)
    train_net.main(_args(tmp_path, "--overwrite"))
    assert final.stat().st_mtime_ns > written
    # --resume continues (a finished run: nothing left to train)
    train_net.main(_args(tmp_path, "--resume"))


def test_a_started_run_is_named_too(tmp_path):
    (tmp_path / "last_checkpoint").write_text("model_0000004.pth")
    with pytest.raises(FileExistsError, match="a started run .*last_checkpoint"):
        train_net.setup(_args(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint"]  # no config.yaml, no log


def test_eval_only_without_weights_is_an_error(tmp_path):
    args = train_net.default_argument_parser().parse_args(
        ["--config-file", CONFIG, "--eval-only", "MODEL.WEIGHTS", "", "OUTPUT_DIR", str(tmp_path)]
    )
    with pytest.raises(ValueError, match="--eval-only needs .*MODEL.WEIGHTS is empty"):
        train_net.main(args)


def test_demo_fails_when_no_input_is_an_image(tmp_path, synthetic_weights):
    fake = tmp_path / "fake.jpg"
    fake.write_text("not an image")
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "demo", "demo.py"),
            *("--config-file", CONFIG, "--input", str(fake), "--output", str(tmp_path / "out")),
            *("--opts", "MODEL.WEIGHTS", synthetic_weights),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert f"none of the 1 input(s) could be read as an image ({fake})" in proc.stderr
    drawn = [f for _, _, files in os.walk(tmp_path / "out") for f in files]
    assert drawn == []
