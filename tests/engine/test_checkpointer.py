"""GridCLIPCheckpointer: untrusted .pkl files, corrupt and wrong-architecture weights, atomic saves
(also under SIGKILL), no checkpoint of diverged weights, and --resume falling back to the newest
loadable checkpoint. On the real GridCLIP model of the embedded default."""

import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_model

from gridclip_d2 import add_gridclip_config
from gridclip_d2.engine.checkpointer import GridCLIPCheckpointer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def model():
    cfg = get_cfg()
    add_gridclip_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "GridCLIP_synthetic.yaml"))
    cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.ENABLED = False
    torch.manual_seed(0)
    return build_model(cfg)


def _changed_copy(model, value):
    """The model's state dict with every float tensor set to ``value`` (to see what got loaded)."""
    return {
        k: (torch.full_like(v, value) if v.is_floating_point() else v.clone())
        for k, v in model.state_dict().items()
    }


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w')",))


def test_pkl_that_would_run_code_is_refused(model, tmp_path):
    marker = str(tmp_path / "PWNED")
    evil = tmp_path / "evil.pkl"
    with open(evil, "wb") as f:
        pickle.dump({"model": {"x": _Evil(marker)}, "__author__": "someone"}, f)
    with pytest.raises(
        pickle.UnpicklingError, match=r"evil.pkl: refusing to load: .*builtins.eval"
    ):
        GridCLIPCheckpointer(model).load(str(evil))
    assert not os.path.exists(marker)

    # A model-zoo style .pkl (numpy arrays in dicts) still loads, and fills the model.
    good = tmp_path / "zoo.pkl"
    arrays = {k: v.numpy().copy() for k, v in _changed_copy(model, 0.5).items()}
    with open(good, "wb") as f:
        pickle.dump({"model": arrays, "__author__": "model zoo"}, f)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        GridCLIPCheckpointer(model).load(str(good))
        assert float(model.head.logit_bias.detach()) == 0.5
    finally:
        model.load_state_dict(before)


def test_corrupt_and_wrong_weights_are_named(model, tmp_path):
    ckpt = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, ckpt)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"Cannot read checkpoint .*truncated.pth") as e:
        GridCLIPCheckpointer(model).load(str(truncated))
    assert "weights_only=False" not in str(e.value)

    import torchvision

    resnet = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), resnet)
    with pytest.raises(
        ValueError, match=r"resnet18.pth fills 0 of the model's \d+ tensors: \d+ missing"
    ):
        GridCLIPCheckpointer(model).load(str(resnet))
    GridCLIPCheckpointer(model, allow_partial=True).load(str(resnet))  # on purpose: only logged


def test_saves_are_atomic_and_diverged_weights_not_saved(model, tmp_path, monkeypatch):
    ckpt = GridCLIPCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000001")
    good = (tmp_path / "model_0000001.pth").read_bytes()

    def full_disk(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        ckpt.save("model_0000003")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == [
        "last_checkpoint",
        "model_0000001.pth",
    ]  # no partial file
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert (tmp_path / "model_0000001.pth").read_bytes() == good

    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            model.head.logit_bias.fill_(float("nan"))
        ckpt.save("model_0000005")
        assert not (tmp_path / "model_0000005.pth").exists()
        assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    finally:
        model.load_state_dict(before)


_SAVER = """
import sys, torch
from torch import nn
from gridclip_d2.engine.checkpointer import GridCLIPCheckpointer
model = nn.Linear(2000, 2000)  # 16 MB per checkpoint
ckpt = GridCLIPCheckpointer(model, sys.argv[1])
i = 0
while True:
    with torch.no_grad():
        model.bias.fill_(i)
    ckpt.save(f"model_{i:07d}")
    i += 1
"""


def test_sigkill_during_saves_leaves_every_file_loadable(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(tmp_path)], cwd=REPO)
    try:
        deadline = time.time() + 120
        while len([f for f in os.listdir(tmp_path) if f.endswith(".pth")]) < 3:
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.05)
        time.sleep(0.13)  # somewhere inside a save
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    for f in os.listdir(tmp_path):
        if f.endswith(".pth"):
            torch.load(tmp_path / f, weights_only=True)  # every checkpoint is whole
    last = (tmp_path / "last_checkpoint").read_text()
    target = nn_linear = torch.nn.Linear(2000, 2000)
    GridCLIPCheckpointer(target, str(tmp_path)).resume_or_load("", resume=True)
    assert float(nn_linear.bias[0].detach()) == int(last[len("model_") : -len(".pth")])
    # a temporary file the kill may have left is removed by the next checkpointer on the folder
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


def test_temporary_files_of_dead_writers_are_removed(model, tmp_path, caplog):
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    dead_pid = int(finished.stdout)  # a process that has exited
    stale = tmp_path / f".tmp-model_0000009.pth-{dead_pid}-k3j_x9q"
    live = tmp_path / f".tmp-model_0000010.pth-{os.getppid()}-a8b7c6d"  # a running writer's
    other = tmp_path / ".tmp-notes-by-hand"
    for f in (stale, live, other):
        f.write_bytes(b"partial")
    GridCLIPCheckpointer(model, str(tmp_path))
    assert not stale.exists() and live.exists() and other.exists()
    assert f"Removed {stale}, left by an interrupted save (process {dead_pid})" in caplog.text


def test_resume_falls_back_to_the_newest_loadable_checkpoint(model, tmp_path, caplog):
    ckpt = GridCLIPCheckpointer(model, str(tmp_path))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        for it, value in ((1, 0.25), (3, 0.75)):
            model.load_state_dict(_changed_copy(model, value))
            ckpt.save(f"model_{it:07d}")
            os.utime(tmp_path / f"model_{it:07d}.pth", (it, it))  # mtime order = iteration order
        broken = tmp_path / "model_0000003.pth"
        broken.write_bytes(broken.read_bytes()[:1000])  # what a crash of an unsafe writer leaves
        model.load_state_dict(before)
        GridCLIPCheckpointer(model, str(tmp_path)).resume_or_load("", resume=True)
        assert float(model.head.logit_bias.detach()) == 0.25
        assert "Resuming from" in caplog.text and "model_0000003.pth" in caplog.text

        (tmp_path / "last_checkpoint").write_text("")  # empty: the newest loadable one
        model.load_state_dict(before)
        GridCLIPCheckpointer(model, str(tmp_path)).resume_or_load("", resume=True)
        assert float(model.head.logit_bias.detach()) == 0.25

        (tmp_path / "model_0000001.pth").write_bytes(b"")
        with pytest.raises(FileNotFoundError, match="no checkpoint in .* can be loaded"):
            GridCLIPCheckpointer(model, str(tmp_path)).resume_or_load("", resume=True)
    finally:
        model.load_state_dict(before)
    assert np.isfinite(float(model.head.logit_bias.detach()))
