"""CLIP checkpoint loading: both OpenAI formats, the seeded random CLIP, and every error path."""

import os
import shutil
import urllib.error

import clip
import pytest
import torch
from clip.model import CLIP

from gridclip_d2.clip_arch import CLIP_ARCHS, infer_arch
from gridclip_d2.modeling import clip_weights
from gridclip_d2.modeling.clip_weights import clip_state_dict_from_cfg, load_clip_state_dict


@pytest.mark.parametrize("fmt", ["state_dict_path", "torchscript_path"])
def test_loads_both_formats_as_float32(clip_tiny_checkpoints, fmt):
    sd = load_clip_state_dict(getattr(clip_tiny_checkpoints, fmt), "RNtiny")
    expected = clip_tiny_checkpoints.state_dict
    assert set(sd) == set(expected)  # OpenAI metadata entries (input_resolution, ...) dropped
    assert "input_resolution" not in sd
    for k, v in expected.items():
        if v.is_floating_point():
            assert sd[k].dtype == torch.float32, k
        assert torch.equal(sd[k], v.to(sd[k].dtype)), k
    assert infer_arch(sd) == CLIP_ARCHS["RNtiny"]


def test_keys_are_clip_models_keys(clip_tiny_checkpoints):
    sd = load_clip_state_dict(clip_tiny_checkpoints.torchscript_path, "RNtiny")
    reference = CLIP(**CLIP_ARCHS["RNtiny"].as_kwargs())
    reference.load_state_dict(sd, strict=True)  # exactly OpenAI's layout


def test_random_clip_is_seeded_and_leaves_rng_alone():
    clip_weights._CACHE.clear()
    torch.manual_seed(1)
    a = load_clip_state_dict("", "RNtiny", seed=7)
    after_first = torch.rand(3)
    clip_weights._CACHE.clear()
    torch.manual_seed(2)  # a different global RNG state must not matter
    b = load_clip_state_dict("", "RNtiny", seed=7)
    torch.manual_seed(1)
    assert torch.equal(torch.rand(3), after_first)  # caller's RNG untouched
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = load_clip_state_dict("", "RNtiny", seed=8)
    assert not torch.equal(a["visual.conv1.weight"], c["visual.conv1.weight"])
    assert infer_arch(a) == CLIP_ARCHS["RNtiny"]
    assert all(v.dtype == torch.float32 for v in a.values() if v.is_floating_point())


def test_cfg_entry_point(clip_tiny_checkpoints, gridclip_cfg):
    cfg = gridclip_cfg(ARCH="RNtiny", WEIGHTS=clip_tiny_checkpoints.state_dict_path)
    sd = clip_state_dict_from_cfg(cfg)
    assert torch.equal(sd["text_projection"], clip_tiny_checkpoints.state_dict["text_projection"])
    cfg = gridclip_cfg(ARCH="RNtiny", WEIGHTS="", INIT_SEED=7)
    assert torch.equal(
        clip_state_dict_from_cfg(cfg)["visual.conv1.weight"],
        load_clip_state_dict("", "RNtiny", seed=7)["visual.conv1.weight"],
    )


def test_openai_name_is_found_in_download_root(clip_tiny_checkpoints, tmp_path, monkeypatch):
    monkeypatch.setattr(clip.clip, "_download", _no_network)
    target = tmp_path / os.path.basename(clip.clip._MODELS["RN50"])
    shutil.copy(clip_tiny_checkpoints.torchscript_path, target)
    # the file holds an RNtiny model: found by name, then the architecture check speaks
    sd = load_clip_state_dict("RN50", "RNtiny", download_root=str(tmp_path))
    assert torch.equal(
        sd["visual.conv1.weight"], clip_tiny_checkpoints.state_dict["visual.conv1.weight"]
    )
    with pytest.raises(ValueError, match=r"RNtiny model but MODEL.CLIP.ARCH is 'RN50'") as e:
        load_clip_state_dict("RN50", "RN50", download_root=str(tmp_path))
    assert str(target) in str(e.value)


def _no_network(url, root):
    raise urllib.error.URLError("[Errno -2] Name or service not known")


def test_offline_name_gives_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(clip.clip, "_download", _no_network)
    with pytest.raises(FileNotFoundError) as e:
        load_clip_state_dict("RN50", "RN50", download_root=str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path / "RN50.pt") in msg  # where it looked
    assert "could not be downloaded" in msg and "Name or service not known" in msg
    assert 'README section "CLIP weights"' in msg  # how to get it
    assert 'WEIGHTS ""' in msg  # the random-init alternative


def test_missing_file_names_it(tmp_path):
    path = str(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt.*no such file"):
        load_clip_state_dict(path, "RN50")


def test_corrupt_file_names_it(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(os.urandom(256))
    with pytest.raises(ValueError, match="garbage.pt is neither a TorchScript archive nor"):
        load_clip_state_dict(str(path), "RNtiny")
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ValueError, match="list.pt holds a list, not a state dict"):
        load_clip_state_dict(str(path), "RNtiny")


def test_not_a_clip_state_dict_names_the_missing_key(tmp_path, clip_tiny_checkpoints):
    sd = dict(clip_tiny_checkpoints.state_dict)
    del sd["ln_final.weight"]
    path = tmp_path / "no_ln_final.pt"
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"no_ln_final.pt.*'ln_final.weight' is missing"):
        load_clip_state_dict(str(path), "RNtiny")
    # without an architecture to check, the file loads (the model's key check is the next guard)
    assert "ln_final.bias" in load_clip_state_dict(str(path), None)


def test_unknown_arch_names_the_option():
    with pytest.raises(KeyError, match="MODEL.CLIP.ARCH.*RNtiny"):
        load_clip_state_dict("", "RN18")
