"""The model's vocabulary comes from its config alone, and a text-embedding .npy is checked against
its sidecar (names, CLIP architecture, text-tower fingerprint, prompts)."""

import importlib.util
import json
import logging
import os

import numpy as np
import pytest

from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from gridclip_d2.modeling.text_classifier import TextClassifier
from gridclip_d2.vocabulary import SYNTHETIC_NAMES, model_vocabulary, vocabulary_from_cfg

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location(
    "dump_text_embeddings_for_vocab", os.path.join(REPO, "tools", "dump_text_embeddings.py")
)
dump_text = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dump_text)


@pytest.fixture
def tiny_cfg(gridclip_cfg, clip_tiny_checkpoints):
    cfg = gridclip_cfg(ARCH="RNtiny", WEIGHTS=clip_tiny_checkpoints.state_dict_path)
    cfg.DATASETS.TRAIN = ()
    return cfg


@pytest.fixture
def npy(tmp_path, clip_tiny_checkpoints):
    """Embeddings of three names written by tools/dump_text_embeddings.py (with their sidecar)."""
    out = tmp_path / "three.npy"
    assert (
        dump_text.main(
            [
                "--clip",
                clip_tiny_checkpoints.state_dict_path,
                "--vocabulary",
                "custom",
                "--custom-vocabulary",
                "zebra,traffic_cone,kite",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return str(out)


def test_vocabulary_sources(tiny_cfg, tmp_path, npy):
    cfg = tiny_cfg
    with pytest.raises(ValueError, match="no vocabulary: set MODEL.GRIDCLIP.CLASS_NAMES"):
        vocabulary_from_cfg(cfg)
    name = "gridclip_test_vocab_train"
    MetadataCatalog.get(name).set(thing_classes=["a", "b"])
    cfg.DATASETS.TRAIN = (name,)
    assert vocabulary_from_cfg(cfg) == (["a", "b"], f"the classes of training set {name!r}")

    cfg.MODEL.GRIDCLIP.TEXT_EMBEDDINGS = npy  # its sidecar names the classes
    assert vocabulary_from_cfg(cfg)[0] == ["zebra", "traffic_cone", "kite"]

    cfg.MODEL.GRIDCLIP.VOCABULARY = "synthetic"
    assert vocabulary_from_cfg(cfg)[0] == list(SYNTHETIC_NAMES)
    txt = tmp_path / "names.txt"
    txt.write_text("# my classes\nkite, paper kite\nzebra\n")
    cfg.MODEL.GRIDCLIP.VOCABULARY = str(txt)
    assert vocabulary_from_cfg(cfg)[0] == ["kite", "zebra"]
    js = tmp_path / "names.json"
    js.write_text(json.dumps(["x", "y z"]))
    cfg.MODEL.GRIDCLIP.VOCABULARY = str(js)
    assert vocabulary_from_cfg(cfg)[0] == ["x", "y z"]
    cfg.MODEL.GRIDCLIP.VOCABULARY = "coco"  # a misspelt built-in name is not a one-class vocabulary
    with pytest.raises(ValueError, match="VOCABULARY 'coco': expected lvis or synthetic"):
        vocabulary_from_cfg(cfg)
    cfg.MODEL.GRIDCLIP.VOCABULARY = "kite, zebra"  # names, as every entry point parses them
    assert vocabulary_from_cfg(cfg) == (["kite", "zebra"], "MODEL.GRIDCLIP.VOCABULARY")
    cfg.MODEL.GRIDCLIP.VOCABULARY = str(tmp_path / "absent.txt")
    with pytest.raises(FileNotFoundError, match="absent.txt"):
        vocabulary_from_cfg(cfg)

    cfg.MODEL.GRIDCLIP.VOCABULARY = ""
    cfg.MODEL.GRIDCLIP.CLASS_NAMES = ["person", "necktie"]
    assert vocabulary_from_cfg(cfg) == (["person", "necktie"], "MODEL.GRIDCLIP.CLASS_NAMES")
    cfg.MODEL.GRIDCLIP.VOCABULARY = "lvis"
    with pytest.raises(
        ValueError, match="CLASS_NAMES .* and MODEL.GRIDCLIP.VOCABULARY .* are both set"
    ):
        vocabulary_from_cfg(cfg)


def test_model_builds_from_the_sidecar_alone(tiny_cfg, npy, clip_tiny_checkpoints):
    cfg = tiny_cfg
    cfg.merge_from_file(os.path.join(REPO, "configs", "GridCLIP_synthetic.yaml"))
    cfg.MODEL.CLIP.ARCH, cfg.MODEL.CLIP.WEIGHTS = "RNtiny", clip_tiny_checkpoints.state_dict_path
    cfg.MODEL.GRIDCLIP.TEXT_EMBEDDINGS = npy
    cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.ENABLED = False
    cfg.DATASETS.TRAIN = ("gridclip_test_no_such_set",)
    model = build_model(cfg)  # no data set needed
    assert model.vocabulary == ["zebra", "traffic_cone", "kite"] and model.num_classes == 3
    np.testing.assert_allclose(model.head.classifier.embeddings.numpy(), np.load(npy), atol=1e-6)

    # The .npy given as VOCABULARY: its sidecar names the classes and its rows embed them.
    cfg.MODEL.GRIDCLIP.TEXT_EMBEDDINGS = ""
    cfg.MODEL.GRIDCLIP.VOCABULARY = npy
    vocabulary = model_vocabulary(cfg)
    assert vocabulary.names == ("zebra", "traffic_cone", "kite")
    assert (
        vocabulary.embeddings_file == npy
        and vocabulary.source == f"MODEL.GRIDCLIP.VOCABULARY {npy}"
    )
    model = build_model(cfg)
    np.testing.assert_allclose(model.head.classifier.embeddings.numpy(), np.load(npy), atol=1e-6)
    cfg.MODEL.GRIDCLIP.TEXT_EMBEDDINGS = npy  # the same file twice is one file
    assert model_vocabulary(cfg).embeddings_file == npy
    cfg.MODEL.GRIDCLIP.TEXT_EMBEDDINGS = npy[: -len(".npy")] + "_other.npy"
    with pytest.raises(ValueError, match="two text-embedding files: give one"):
        model_vocabulary(cfg)


def test_sidecar_mismatches_name_both_sides(tiny_cfg, npy, caplog):
    cfg = tiny_cfg
    cfg.MODEL.GRIDCLIP.TEXT_EMBEDDINGS = npy
    assert TextClassifier(cfg, names=["zebra", "traffic_cone", "kite"]).num_classes == 3

    # Names: both lists and the first difference.
    with pytest.raises(ValueError) as e:
        TextClassifier(
            cfg, names=["zebra", "kite", "traffic_cone"], names_source="MODEL.GRIDCLIP.CLASS_NAMES"
        )
    msg = str(e.value)
    assert "three.json" in msg and "MODEL.GRIDCLIP.CLASS_NAMES" in msg
    assert "['zebra', 'traffic_cone', 'kite']" in msg and "['zebra', 'kite', 'traffic_cone']" in msg
    assert "first difference at class 1: 'traffic_cone' vs 'kite'" in msg
    with pytest.raises(ValueError, match=r"only in the vocabulary .*\['person'\]"):
        TextClassifier(cfg, names=["zebra", "traffic_cone", "person"])

    # Other CLIP weights (same architecture): the text fingerprint differs.
    other = cfg.clone()
    other.MODEL.CLIP.WEIGHTS = ""
    with pytest.raises(
        ValueError,
        match=r"three.npy were made with CLIP weights .*rntiny_state_dict.pt.* other weights",
    ):
        TextClassifier(other, names=["zebra", "traffic_cone", "kite"])

    # Other prompts than the model embeds later vocabularies with.
    other = cfg.clone()
    other.MODEL.GRIDCLIP.PROMPT_ENSEMBLE = True
    with pytest.raises(ValueError, match=r"prompts \['a \{\}'\].*PROMPT_ENSEMBLE give \['There is"):
        TextClassifier(other, names=["zebra", "traffic_cone", "kite"])

    # Another architecture.
    sidecar = npy[:-4] + ".json"
    meta = json.loads(open(sidecar).read())
    with open(sidecar, "w") as f:
        json.dump(dict(meta, arch="RN50"), f)
    with pytest.raises(ValueError, match="made with CLIP 'RN50'.*MODEL.CLIP.ARCH is 'RNtiny'"):
        TextClassifier(cfg, names=["zebra", "traffic_cone", "kite"])

    # A sidecar from before fingerprints were recorded: accepted, with a warning.
    del meta["text_fingerprint"]
    with open(sidecar, "w") as f:
        json.dump(meta, f)
    with caplog.at_level(logging.WARNING, logger="gridclip_d2"):
        TextClassifier(cfg, names=["zebra", "traffic_cone", "kite"])
    assert "records no CLIP text fingerprint" in caplog.text


def test_lvis_embeddings_from_the_dump_tool_fit_lvis_training_and_evaluation(
    tmp_path, gridclip_cfg
):
    """The LVIS route: embeddings written by `dump_text_embeddings.py --vocabulary lvis` name
    exactly the classes lvis_v1_train_base labels and lvis_v1_val evaluates (Detectron2's
    thing_classes)."""
    from gridclip_d2.engine import check_training_vocabulary

    out = str(tmp_path / "lvis.npy")
    assert (
        dump_text.main(["--clip", "", "--arch", "RNtiny", "--vocabulary", "lvis", "--out", out])
        == 0
    )
    cfg = gridclip_cfg(ARCH="RNtiny", WEIGHTS="")
    cfg.merge_from_file(os.path.join(REPO, "configs", "GridCLIP_LVIS.yaml"))
    cfg.MODEL.CLIP.ARCH, cfg.MODEL.CLIP.WEIGHTS = "RNtiny", ""
    cfg.MODEL.GRIDCLIP.TEXT_EMBEDDINGS = out
    cfg.MODEL.GRIDCLIP.PROMPT_ENSEMBLE = False  # the dump above used the single prompt "a {}"
    names, source = vocabulary_from_cfg(cfg)
    assert source == f"the sidecar of {out}"
    check_training_vocabulary(cfg)  # lvis_v1_train_base's classes are the vocabulary
    assert names == MetadataCatalog.get("lvis_v1_val").thing_classes  # evaluated without a switch
    assert TextClassifier(cfg, names=names, names_source=source).num_classes == 1203
