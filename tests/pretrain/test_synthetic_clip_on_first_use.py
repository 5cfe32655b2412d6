"""MODEL.CLIP.WEIGHTS "synthetic": building a model only reads the small CLIP; the setup of the
entry points makes it on first use, saying so; a missing file is an error naming the command that
makes it."""

import functools
import logging
import os

import pytest

from detectron2.config import get_cfg
from detectron2.modeling import build_model

from gridclip_d2 import add_gridclip_config
from gridclip_d2.data.synthetic import ensure_synthetic_dataset
from gridclip_d2.engine import setup_cfg
from gridclip_d2.modeling.clip_weights import synthetic_clip_path
from gridclip_d2.pretrain import synthetic_clip

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "GridCLIP_synthetic.yaml")


@pytest.fixture
def no_small_clip(tmp_path, monkeypatch):
    """A machine where the small CLIP was never made (its path under an empty folder); the
    synthetic set (made once per machine) is linked in, for the pretraining's zero-shot check."""
    shared_set = ensure_synthetic_dataset()
    (tmp_path / "datasets").mkdir()
    os.symlink(shared_set, tmp_path / "datasets" / "synthetic")
    monkeypatch.delenv("GRIDCLIP_SYNTHETIC_CLIP", raising=False)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    path = synthetic_clip_path()
    assert path.startswith(str(tmp_path)) and not os.path.exists(path)
    return path


def test_building_a_model_never_pretrains_and_names_the_command(no_small_clip):
    cfg = get_cfg()
    add_gridclip_config(cfg)
    cfg.merge_from_file(CONFIG)
    with pytest.raises(FileNotFoundError) as e:
        build_model(cfg)
    assert "MODEL.CLIP.WEIGHTS 'synthetic'" in str(e.value)
    assert no_small_clip in str(e.value) and "python tools/pretrain_clip.py" in str(e.value)
    assert not os.path.exists(os.path.dirname(no_small_clip))  # nothing was made


def test_setup_makes_it_once_with_a_log_line(no_small_clip, monkeypatch, caplog):
    # the real pretraining, shortened (the default run takes minutes)
    monkeypatch.setattr(
        synthetic_clip,
        "PretrainConfig",
        functools.partial(
            synthetic_clip.PretrainConfig, steps=2, batch_size=8, warmup=1, num_pairs=32
        ),
    )
    with caplog.at_level(logging.INFO, logger="gridclip_d2.pretrain.synthetic_clip"):
        cfg = setup_cfg(CONFIG, ["MODEL.GRIDCLIP.VOCABULARY", "synthetic"], mode="inference")
    assert os.path.isfile(no_small_clip)
    text = caplog.text
    assert f"{no_small_clip} does not exist; pretraining the small CLIP" in text
    assert "about 5 minutes" in text and "Small CLIP pretrained in" in text
    # the zero-shot table, at the end of the pretraining
    assert f"Zero-shot accuracy (%) of {no_small_clip} on" in text and "| test | one prompt" in text
    build_model(cfg)  # now it builds
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gridclip_d2.pretrain.synthetic_clip"):
        setup_cfg(CONFIG, ["MODEL.GRIDCLIP.VOCABULARY", "synthetic"], mode="inference")
    assert "pretraining" not in caplog.text  # made once
