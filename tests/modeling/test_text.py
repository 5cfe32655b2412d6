"""Text side: CLIP text encoder, prompt handling, the frozen text classifier, the text fingerprint
of the CLIP weights (vocabularies themselves: tests/vocabulary/)."""

import functools
import json
import os

import clip
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gridclip_d2.modeling import text_classifier
from gridclip_d2.modeling.clip_text import (
    PROMPT_ENSEMBLE,
    CLIPTextEncoder,
    build_text_encoder,
    check_prompt,
    encode_names,
    fill_prompt,
    prompts_from_cfg,
    text_embeddings_from_cfg,
)
from gridclip_d2.modeling.clip_weights import (
    clip_state_dict_from_cfg,
    load_clip_state_dict,
    text_fingerprint,
)
from gridclip_d2.modeling.text_classifier import (
    TextClassifier,
    checked_text_embeddings,
    load_text_embeddings,
)

TOL = 1e-4


@functools.lru_cache(maxsize=4)
def _reference_model(path):
    return clip.load(path, device="cpu", jit=False)[0].float().eval()


def _reference_embeddings(path, texts):
    model = _reference_model(path)
    with torch.no_grad():
        return F.normalize(model.encode_text(clip.tokenize(texts)), dim=-1)


@pytest.mark.parametrize("fmt", ["state_dict_path", "torchscript_path"])
def test_text_embeddings_equal_clip_encode_text(clip_tiny_checkpoints, fmt):
    path = getattr(clip_tiny_checkpoints, fmt)
    encoder = build_text_encoder(path, "RNtiny")
    assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.training
    texts = ["a photo of an aerosol can.", "a photo of a dog.", "a photo of a bow (weapon)."]
    expected = _reference_embeddings(path, texts)
    got = encode_names(
        encoder, ["aerosol_can", "Dog", "bow_(weapon)"], ["a photo of {article} {}."]
    )
    assert got.dtype == torch.float32 and got.shape == (3, 128)
    assert (got - expected).abs().max() < TOL
    tokens = clip.tokenize(texts)  # full 77-token context, as clip pads
    with torch.no_grad():
        model = _reference_model(path)
        assert (encoder.encode_text(tokens) - model.encode_text(tokens)).abs().max() < TOL


def test_synonyms_and_templates_are_averaged(clip_tiny_checkpoints):
    path = clip_tiny_checkpoints.torchscript_path
    encoder = build_text_encoder(path, "RNtiny")
    templates = ["a {}", "a photo of the {}."]
    got = encode_names(encoder, ["kite", "car"], templates, synonyms=[["kite", "paper_kite"], []])
    texts = [
        "a kite",
        "a photo of the kite.",
        "a paper kite",
        "a photo of the paper kite.",
        "a car",
        "a photo of the car.",
    ]
    ref = _reference_embeddings(path, texts)
    expected = F.normalize(torch.stack([ref[:4].mean(0), ref[4:].mean(0)]), dim=-1)
    assert (got - expected).abs().max() < TOL
    # batching does not change the result
    batched = encode_names(
        encoder, ["kite", "car"], templates, [["kite", "paper_kite"], []], batch_size=1
    )
    assert (batched - got).abs().max() < 1e-6


def test_prompts():
    assert (
        fill_prompt("There is {article} {} in the scene.", "aerosol_can")
        == "There is an aerosol can in the scene."
    )
    assert fill_prompt("a {}", "Traffic_Light") == "a traffic light"
    assert len(PROMPT_ENSEMBLE) == 63 and all(check_prompt(t) for t in PROMPT_ENSEMBLE)
    with pytest.raises(ValueError, match=r'must contain "\{\}"'):
        check_prompt("a photo of a thing")
    with pytest.raises(ValueError, match="does not format"):
        check_prompt("a {} of {kind}")


def test_text_embeddings_from_cfg(clip_tiny_checkpoints, gridclip_cfg):
    path = clip_tiny_checkpoints.state_dict_path
    cfg = gridclip_cfg(ARCH="RNtiny", WEIGHTS=path)
    cfg.MODEL.GRIDCLIP.PROMPT = "a photo of a {}."
    got = text_embeddings_from_cfg(cfg, ["cat", "traffic_cone"])
    assert (
        got - _reference_embeddings(path, ["a photo of a cat.", "a photo of a traffic cone."])
    ).abs().max() < TOL
    cfg.MODEL.GRIDCLIP.PROMPT_ENSEMBLE = True
    ensemble = text_embeddings_from_cfg(cfg, ["cat"])
    ref = _reference_embeddings(path, [fill_prompt(t, "cat") for t in PROMPT_ENSEMBLE])
    assert (ensemble[0] - F.normalize(ref.mean(0), dim=0)).abs().max() < TOL
    cfg.MODEL.GRIDCLIP.PROMPT_ENSEMBLE = False
    cfg.MODEL.GRIDCLIP.PROMPT = "a photo"
    with pytest.raises(ValueError, match="MODEL.GRIDCLIP.PROMPT"):
        text_embeddings_from_cfg(cfg, ["cat"])


def test_text_keys_are_checked(clip_tiny_checkpoints):
    sd = dict(clip_tiny_checkpoints.state_dict)
    encoder = CLIPTextEncoder.from_arch("RNtiny")
    missing = {k: v for k, v in sd.items() if k != "ln_final.bias"}
    with pytest.raises(KeyError, match=r"missing keys \['ln_final.bias'\]"):
        encoder.load_clip_text(missing)
    with pytest.raises(
        KeyError, match=r"unexpected keys \['transformer.resblocks.9.ln_1.weight'\]"
    ):
        encoder.load_clip_text(dict(sd, **{"transformer.resblocks.9.ln_1.weight": torch.ones(128)}))
    with pytest.raises(ValueError, match=r"text_projection has shape \(128, 64\)"):
        encoder.load_clip_text(dict(sd, text_projection=torch.zeros(128, 64)))


def test_classifier_is_fixed_cosine_similarity():
    torch.manual_seed(0)
    emb = torch.randn(5, 16)
    clf = TextClassifier(emb)
    assert clf.num_classes == 5 and clf.embed_dim == 16
    assert list(clf.parameters()) == [] and "embeddings" not in clf.state_dict()  # non-persistent
    assert torch.allclose(clf.embeddings.norm(dim=1), torch.ones(5))
    x = torch.randn(2, 7, 3, 16)  # ... x D
    logits = clf(x)
    assert logits.shape == (2, 7, 3, 5)
    expected = F.cosine_similarity(x[..., None, :], emb, dim=-1)
    assert (logits - expected).abs().max() < 1e-5
    clf.set_embeddings(torch.randn(9, 16))
    assert clf(x).shape == (2, 7, 3, 9) and clf.num_classes == 9
    with pytest.raises(ValueError, match="dimension 8, the classifier 16"):
        clf.set_embeddings(torch.randn(3, 8))
    with pytest.raises(ValueError, match="C > 0"):
        TextClassifier(torch.zeros(0, 16))


def test_classifier_from_npy_checks_rows_and_dim(tmp_path, gridclip_cfg):
    cfg = gridclip_cfg(ARCH="RNtiny", WEIGHTS="")
    path = tmp_path / "emb.npy"
    np.save(path, np.random.RandomState(0).randn(4, 128).astype(np.float32))
    cfg.MODEL.GRIDCLIP.TEXT_EMBEDDINGS = str(path)
    names = ["a", "b", "c", "d"]
    clf = TextClassifier(cfg, names=names)  # no sidecar: rows taken as given (a warning)
    assert clf.num_classes == 4
    assert torch.allclose(clf.embeddings, load_text_embeddings(str(path)))
    with pytest.raises(
        ValueError, match=r"emb.npy have 4 rows but the model's vocabulary has 7 classes"
    ):
        TextClassifier(cfg, names=names + ["e", "f", "g"])
    np.save(path, np.ones((4, 64), dtype=np.float32))
    with pytest.raises(ValueError, match=r"emb.npy have dimension 64 .*MODEL.CLIP.ARCH.* 128"):
        TextClassifier(cfg, names=names)
    np.save(path, np.ones((4,), dtype=np.float32))
    with pytest.raises(ValueError, match="2-d float array"):
        TextClassifier(cfg, names=names)
    cfg.MODEL.GRIDCLIP.TEXT_EMBEDDINGS = str(tmp_path / "missing.npy")
    with pytest.raises(FileNotFoundError, match="missing.npy.*dump_text_embeddings.py"):
        TextClassifier(cfg, names=names)


def test_checked_text_embeddings_read_the_sidecar_once(tmp_path, gridclip_cfg, monkeypatch):
    """One helper loads a text-embedding .npy, reads its sidecar once and checks it: the model's
    classifier (names given) and the predictor's vocabulary swap (names from the sidecar)."""
    cfg = gridclip_cfg(ARCH="RNtiny", WEIGHTS="")
    path = tmp_path / "emb.npy"
    rows = text_embeddings_from_cfg(cfg, ["zebra", "kite", "flag"]).numpy()
    np.save(path, rows)
    meta = {
        "names": ["zebra", "kite", "flag"],
        "arch": "RNtiny",
        "text_fingerprint": text_fingerprint(clip_state_dict_from_cfg(cfg)),
        "prompts": list(prompts_from_cfg(cfg)),
    }
    (tmp_path / "emb.json").write_text(json.dumps(meta))
    reads = []
    read = text_classifier.read_sidecar
    monkeypatch.setattr(text_classifier, "read_sidecar", lambda p: reads.append(p) or read(p))
    names, emb = checked_text_embeddings(cfg, str(path))  # names from the sidecar
    assert names == ["zebra", "kite", "flag"] and len(reads) == 1
    assert torch.allclose(emb, F.normalize(torch.from_numpy(rows), dim=1))
    cfg.MODEL.GRIDCLIP.TEXT_EMBEDDINGS = str(path)
    assert TextClassifier(cfg, names=names).num_classes == 3 and len(reads) == 2
    with pytest.raises(ValueError, match="only in the vocabulary"):
        checked_text_embeddings(cfg, str(path), ["zebra", "kite", "cat"], "the test")
    cfg.MODEL.GRIDCLIP.PROMPT = "a photo of a {}."
    with pytest.raises(ValueError, match="prompts"):
        checked_text_embeddings(cfg, str(path))
    (tmp_path / "emb.json").unlink()
    with pytest.raises(ValueError, match="no sidecar .*emb.json naming its rows"):
        checked_text_embeddings(cfg, str(path))


def test_classifier_from_names(gridclip_cfg):
    cfg = gridclip_cfg(ARCH="RNtiny", WEIGHTS="", INIT_SEED=3)
    clf = TextClassifier(cfg, names=["red_circle", "kite", "zebra"])
    expected = encode_names(
        build_text_encoder("", "RNtiny", seed=3), ["red_circle", "kite", "zebra"], ["a {}"]
    )
    assert torch.equal(clf.embeddings, expected)


def test_random_text_encoder_is_deterministic():
    a = build_text_encoder("", "RNtiny", seed=5).text_projection
    sd = load_clip_state_dict("", "RNtiny", seed=5)
    assert torch.equal(a, sd["text_projection"])


def test_text_fingerprint_is_cached_per_checkpoint_file(
    clip_tiny_checkpoints, tmp_path, monkeypatch
):
    """The sidecar check's fingerprint is computed once per checkpoint file (path, mtime, size): a
    second check reads nothing; a rewritten file is read again; the cache is bounded."""
    from gridclip_d2.modeling import text_fingerprint as tf

    path = tmp_path / "clip.pt"
    path.write_bytes(open(clip_tiny_checkpoints.state_dict_path, "rb").read())
    loads = []
    load = tf.load_clip_state_dict
    monkeypatch.setattr(tf, "load_clip_state_dict", lambda *a: loads.append(a) or load(*a))
    monkeypatch.setattr(tf, "_CACHE", type(tf._CACHE)())
    expected = text_fingerprint(clip_tiny_checkpoints.state_dict)
    assert tf.clip_text_fingerprint(str(path), "RNtiny") == expected and len(loads) == 1
    assert tf.clip_text_fingerprint(str(path), "RNtiny") == expected and len(loads) == 1
    os.utime(path, ns=(0, 0))  # "rewritten": another modification time
    assert tf.clip_text_fingerprint(str(path), "RNtiny") == expected and len(loads) == 2
    for seed in range(tf.CACHE_SIZE + 2):
        tf.clip_text_fingerprint("", "RNtiny", seed=seed)
    assert len(tf._CACHE) == tf.CACHE_SIZE
    assert all(isinstance(v, str) and len(v) == 16 for v in tf._CACHE.values())


@pytest.mark.parametrize(
    "sidecar_names, bad_row",
    [(["kite", "zebra", "flag"], 0), (["zebra", "kite", "cat"], 2)],
    ids=["reordered", "renamed"],
)
def test_a_sidecar_whose_names_are_not_its_rows_is_refused(
    tmp_path, gridclip_cfg, sidecar_names, bad_row
):
    """Fingerprint and prompts match, yet the names were edited: the rows, embedded again from
    the names the sidecar gives, do not match, and the file is refused naming the row."""
    cfg = gridclip_cfg(ARCH="RNtiny", WEIGHTS="")
    path = tmp_path / "emb.npy"
    np.save(path, text_embeddings_from_cfg(cfg, ["zebra", "kite", "flag"]).numpy())
    meta = {
        "arch": "RNtiny",
        "text_fingerprint": text_fingerprint(clip_state_dict_from_cfg(cfg)),
        "prompts": list(prompts_from_cfg(cfg)),
    }
    (tmp_path / "emb.json").write_text(json.dumps(dict(meta, names=sidecar_names)))
    with pytest.raises(ValueError, match=f"row {bad_row} is not the text embedding of"):
        checked_text_embeddings(cfg, str(path))
    (tmp_path / "emb.json").write_text(json.dumps(dict(meta, names=["zebra", "kite", "flag"])))
    names, _ = checked_text_embeddings(cfg, str(path))  # the true names pass
    assert names == ["zebra", "kite", "flag"]
