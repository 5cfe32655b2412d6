"""A config file cannot run code: a ``!!python/...`` tag in a config (or in its ``_BASE_``) is
refused, naming the file and line, before anything runs, through every entry point that reads a
config."""

import importlib.util
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tools"))
import display_threshold  # noqa: E402
import dump_image_embeddings  # noqa: E402
import export_model  # noqa: E402

import train_net  # noqa: E402
from gridclip_d2 import GridCLIPPredictor  # noqa: E402


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _load("gridclip_demo_for_config_safety", os.path.join(REPO, "demo", "demo.py"))
app = _load("gridclip_app_for_config_safety", os.path.join(REPO, "demo", "app.py"))


def _train_net(cfg):
    return train_net.main(train_net.default_argument_parser().parse_args(["--config-file", cfg]))


ENTRY_POINTS = {
    "train_net": _train_net,
    "train_net --eval-only": lambda cfg: train_net.main(
        train_net.default_argument_parser().parse_args(["--config-file", cfg, "--eval-only"])
    ),
    "demo": lambda cfg: demo.main(["--config-file", cfg, "--input", cfg, "--output", "o"]),
    "web page": lambda cfg: app.main(["--config-file", cfg]),
    "predictor": lambda cfg: GridCLIPPredictor.from_config_file(cfg),
    "export": lambda cfg: export_model.main(
        ["--config-file", cfg, "--sample-image", cfg, "--output", "exp"]
    ),
    "display_threshold": lambda cfg: display_threshold.main(["--config-file", cfg]),
    "dump_image_embeddings": lambda cfg: dump_image_embeddings.main(["--config-file", cfg]),
}


@pytest.mark.parametrize("in_base", [False, True], ids=["in the file", "in its _BASE_"])
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_python_tag_is_refused_before_anything_runs(entry, in_base, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    tag = f'!!python/object/apply:os.system ["touch {marker}"]'
    base = os.path.join(REPO, "configs", "GridCLIP_synthetic.yaml")
    if in_base:
        evil = tmp_path / "base.yaml"
        evil.write_text(f'_BASE_: "{base}"\nSEED: {tag}\n')
        cfg = tmp_path / "shared.yaml"
        cfg.write_text(f'_BASE_: "{evil}"\nOUTPUT_DIR: "{tmp_path / "out"}"\n')
    else:
        evil = cfg = tmp_path / "shared.yaml"
        cfg.write_text(f'_BASE_: "{base}"\nSEED: {tag}\n')
    with pytest.raises(ValueError) as e:
        ENTRY_POINTS[entry](str(cfg))
    assert f"Config {evil}, line 2" in str(e.value) and "safe YAML loader" in str(e.value)
    assert not marker.exists()
    written = sorted(
        os.path.relpath(os.path.join(d, f), tmp_path) for d, _, fs in os.walk(tmp_path) for f in fs
    )
    assert written == sorted(["shared.yaml"] + (["base.yaml"] if in_base else []))
