"""tools/dump_text_embeddings.py: outputs, metadata, determinism, errors, and no half-written
files."""

import importlib.util
import json
import os
import subprocess
import sys

import clip
import numpy as np
import pytest
import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "dump_text_embeddings.py")


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("dump_text_embeddings", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_writes_clip_embeddings_and_metadata(tool, clip_tiny_checkpoints, tmp_path):
    out = tmp_path / "custom.npy"
    path = clip_tiny_checkpoints.torchscript_path
    rc = tool.main(
        [
            "--clip",
            path,
            "--vocabulary",
            "custom",
            "--custom-vocabulary",
            "zebra,traffic_cone,apple",
            "--prompt",
            "a photo of {article} {}.",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    emb = np.load(out)
    assert emb.dtype == np.float32 and emb.shape == (3, 128)
    model = clip.load(path, device="cpu", jit=False)[0].float().eval()
    texts = ["a photo of a zebra.", "a photo of a traffic cone.", "a photo of an apple."]
    with torch.no_grad():
        expected = F.normalize(model.encode_text(clip.tokenize(texts)), dim=-1).numpy()
    assert np.abs(emb - expected).max() < 1e-4
    meta = json.loads((tmp_path / "custom.json").read_text())
    assert meta["names"] == ["zebra", "traffic_cone", "apple"]
    assert meta["prompts"] == ["a photo of {article} {}."]
    assert meta["clip_weights"] == path and meta["arch"] == "RNtiny"  # inferred from the checkpoint
    assert meta["shape"] == [3, 128]
    assert sorted(os.listdir(tmp_path)) == ["custom.json", "custom.npy"]  # no temporary files left


def test_synonyms_file_and_ensemble(tool, clip_tiny_checkpoints, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("kite, paper kite\nzebra\n")
    out = tmp_path / "syn.npy"
    args = [
        "--clip",
        clip_tiny_checkpoints.state_dict_path,
        "--arch",
        "RNtiny",
        "--vocabulary",
        "custom",
        "--vocabulary-file",
        str(names),
        "--prompt-ensemble",
        "--out",
        str(out),
    ]
    assert tool.main(args + ["--avg-synonyms"]) == 0
    with_synonyms = np.load(out)
    meta = json.loads((tmp_path / "syn.json").read_text())
    assert meta["synonyms"] == [["kite", "paper kite"], ["zebra"]] and len(meta["prompts"]) == 63
    assert tool.main(args) == 0
    without = np.load(out)
    assert np.allclose(np.linalg.norm(with_synonyms, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(with_synonyms[0], without[0])  # kite averaged with "paper kite"
    assert np.abs(with_synonyms[1] - without[1]).max() < 1e-6  # zebra has no synonym


def test_random_clip_is_deterministic(tool, tmp_path):
    outs = []
    for i in range(2):
        out = tmp_path / "metadata" / f"synthetic{i}.npy"  # the folder is made (datasets/metadata/)
        assert (
            tool.main(
                ["--clip", "", "--arch", "RNtiny", "--vocabulary", "synthetic", "--out", str(out)]
            )
            == 0
        )
        outs.append(np.load(out))
    assert np.array_equal(outs[0], outs[1])
    from gridclip_d2.data.synthetic import SYNTHETIC_CATEGORIES

    assert outs[0].shape == (len(SYNTHETIC_CATEGORIES), 128)
    meta = json.loads((tmp_path / "metadata" / "synthetic0.json").read_text())
    assert meta["clip_weights"] == "" and meta["seed"] == 0 and meta["vocabulary"] == "synthetic"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--vocabulary", "custom", "--custom-vocabulary", " , "], "empty vocabulary"),
        (
            ["--vocabulary", "custom", "--vocabulary-file", "/nonexistent/names.txt"],
            "/nonexistent/names.txt not found",
        ),
        (
            ["--vocabulary", "custom", "--custom-vocabulary", "kite", "--prompt", "a photo"],
            "--prompt: Prompt 'a photo' must contain \"{}\"",
        ),
        (["--vocabulary", "synthetic", "--custom-vocabulary", "kite"], "need --vocabulary custom"),
    ],
)
def test_errors_leave_previous_output_alone(tool, tmp_path, capsys, extra, message):
    out = tmp_path / "emb.npy"
    out.write_bytes(b"previous")
    rc = tool.main(["--clip", "", "--arch", "RNtiny", "--out", str(out)] + extra)
    assert rc == 2
    assert message in capsys.readouterr().err
    assert out.read_bytes() == b"previous"


def test_interrupted_write_keeps_old_file(tool, tmp_path, monkeypatch):
    out = tmp_path / "emb.npy"
    np.save(out, np.zeros((2, 2), dtype=np.float32))

    def failing_save(f, array):
        f.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(tool.np, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        tool.main(
            ["--clip", "", "--arch", "RNtiny", "--vocabulary", "synthetic", "--out", str(out)]
        )
    monkeypatch.undo()
    assert np.array_equal(np.load(out), np.zeros((2, 2), dtype=np.float32))
    assert sorted(os.listdir(tmp_path)) == ["emb.npy"]


def test_random_clip_needs_arch(tool, tmp_path, capsys):
    assert (
        tool.main(["--clip", "", "--vocabulary", "synthetic", "--out", str(tmp_path / "x.npy")])
        == 2
    )
    assert "needs --arch" in capsys.readouterr().err


@pytest.mark.slow
def test_command_line(tmp_path):
    out = tmp_path / "cli.npy"
    result = subprocess.run(
        [
            sys.executable,
            TOOL,
            "--clip",
            "",
            "--arch",
            "RNtiny",
            "--vocabulary",
            "custom",
            "--custom-vocabulary",
            "cat,dog",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert np.load(out).shape == (2, 128)
    assert "text embeddings" in result.stderr  # tqdm progress with ETA
