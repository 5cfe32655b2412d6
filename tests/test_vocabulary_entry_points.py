"""One parsing rule at every entry point: the same vocabularies through GridCLIPPredictor (its
``vocabulary`` argument and ``set_vocabulary``), demo/demo.py --custom-vocabulary, the web page's
text box, a config's MODEL.GRIDCLIP.CLASS_NAMES / VOCABULARY and tools/dump_text_embeddings.py
--custom-vocabulary: each accepts the same ones with the same names and refuses the same ones with
the same error. The web page refuses files (it never reads the server's), and a config's one-word
VOCABULARY must be a built-in name (a misspelling guard); nothing else differs."""

import functools
import importlib.util
import json
import os

import numpy as np
import pytest
import torch

from gridclip_d2 import GridCLIPPredictor
from gridclip_d2.predictor import config_with_vocabulary
from gridclip_d2.vocabulary import vocabulary_from_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "GridCLIP_synthetic.yaml")
RANDOM_CLIP = ["MODEL.CLIP.WEIGHTS", ""]  # the seeded random small CLIP: nothing to pretrain


def _load(name, *path):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, *path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _load("gridclip_demo_for_vocabulary", "demo", "demo.py")
dump = _load("dump_text_embeddings_for_vocabulary", "tools", "dump_text_embeddings.py")

FILE_REFUSED = (ValueError, "names a file .*only class names are taken here, never files")
NAMES = ["zebra", "traffic cone", "kite"]
# id, value ("{dir}" is the folder of the files below), names or (exception, message pattern)
CASES = [
    ("list", ["zebra", " traffic cone ", "kite"], NAMES),
    ("comma-separated", "zebra, traffic cone ,kite", NAMES),
    ("blank pieces skipped", " zebra ,, kite ", ["zebra", "kite"]),
    ("one name", "kite", ["kite"]),
    ("'#' in a list is a name", ["#1 priority", "kite"], ["#1 priority", "kite"]),
    ("'#' in a string is a name", "#1 priority, kite", ["#1 priority", "kite"]),
    (
        "items that are not strings",
        [1, None, 2.5],
        (ValueError, r"item 0 is 1 \(int\); item 1 is None \(NoneType\); item 2 is 2.5 \(float\)"),
    ),
    ("a blank item", ["kite", " "], (ValueError, r"item 1 is ' ' \(str\)")),
    (
        "a name twice in a list",
        ["kite", "zebra", "kite"],
        (ValueError, r"'kite' given more than once \(item 0 and item 2\)"),
    ),
    ("a name twice in a string", "kite, zebra,kite", (ValueError, "'kite' given more than once")),
    ("nothing but commas", " , ", (ValueError, "empty vocabulary")),
    ("an empty list", [], (ValueError, "empty vocabulary")),
    ("a .txt file", "{dir}/names.txt", ["kite", "zebra"]),
    ("a .TXT file, spaces around", " {dir}/UPPER.TXT ", ["a", "b"]),
    ("a .json list", "{dir}/names.json", ["x", "y z"]),
    ("a .json object", "{dir}/object.json", ["kite", "flag"]),
    ("a .json with a number", "{dir}/bad.json", (ValueError, r"item 1 is 3 \(int\)")),
    ("a .npy with its sidecar", "{dir}/kite_zebra.npy", ["kite", "zebra"]),
    ("a .npy without sidecar", "{dir}/bare.npy", (ValueError, "no sidecar .*bare.json")),
    ("a missing file", "{dir}/missing.txt", (FileNotFoundError, "missing.txt not found")),
    (
        "a string ending in .txt is a file",
        "zebra.npy, cone.json,missing.txt",
        (FileNotFoundError, "zebra.npy, cone.json,missing.txt not found"),
    ),
    (
        "an existing file among names is a name",
        "{dir}/names.txt, kite",
        ["{dir}/names.txt", "kite"],
    ),
    ("an existing file without suffix is a name", "{dir}/plain", ["{dir}/plain"]),
]
FILE_CASES = {
    "a .txt file",
    "a .TXT file, spaces around",
    "a .json list",
    "a .json object",
    "a .json with a number",
    "a .npy with its sidecar",
    "a .npy without sidecar",
    "a missing file",
    "a string ending in .txt is a file",
}
# what differs, and why
EXCEPTIONS = {
    "web page": {case: FILE_REFUSED for case in FILE_CASES},  # never reads the server's files
    "config": {
        # a misspelt built-in vocabulary must not become a one-class model
        "one name": (ValueError, "VOCABULARY 'kite': expected lvis or synthetic"),
        "an existing file without suffix is a name": (ValueError, "expected lvis or synthetic"),
        "an empty list": None,  # CLASS_NAMES [] is "not set": the next source is used
    },
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vocabularies")
    (folder / "names.txt").write_text("# my classes\nkite, paper kite\n\nzebra\n")
    (folder / "UPPER.TXT").write_text("a\nb\n")
    (folder / "plain").write_text("secret class\n")
    (folder / "names.json").write_text(json.dumps(["x", "y z"]))
    (folder / "object.json").write_text(json.dumps({"names": ["kite", "flag"]}))
    (folder / "bad.json").write_text(json.dumps(["a", 3]))
    np.save(folder / "bare.npy", np.ones((2, 128), np.float32))
    return str(folder)


@pytest.fixture(scope="module")
def predictor(files):
    """The embedded default's model with the random small CLIP (MODEL.WEIGHTS empty: an untrained
    head; only the vocabulary matters here), and a .npy of two names made for it."""
    predictor = GridCLIPPredictor.from_config_file(CONFIG, opts=RANDOM_CLIP, vocabulary=["flag"])
    clip = predictor.cfg.MODEL.CLIP
    args = ["--clip", "", "--arch", clip.ARCH, "--seed", str(clip.INIT_SEED)]
    args += ["--vocabulary", "custom", "--custom-vocabulary", "kite,zebra"]
    assert dump.main(args + ["--out", os.path.join(files, "kite_zebra.npy")]) == 0
    return predictor


def _set_vocabulary(predictor, value, tmp_path):
    before = predictor.vocabulary
    try:
        predictor.set_vocabulary(value)
    except Exception:
        assert predictor.vocabulary == before  # a refused vocabulary changes nothing
        raise
    return predictor.vocabulary


def _predictor_argument(predictor, value, tmp_path):
    # what GridCLIPPredictor(cfg, vocabulary=value) builds its model from
    return list(config_with_vocabulary(predictor.cfg, value).MODEL.GRIDCLIP.CLASS_NAMES)


def _demo(predictor, value, tmp_path):
    argv = ["--config-file", CONFIG, "--input", "x.jpg", "--custom-vocabulary", value]
    cfg = demo.setup_cfg(demo.get_parser().parse_args(argv + ["--opts"] + RANDOM_CLIP))
    return list(cfg.MODEL.GRIDCLIP.CLASS_NAMES)


@functools.lru_cache(maxsize=1)
def _app():
    pytest.importorskip("gradio")
    return _load("gridclip_app_for_vocabulary", "demo", "app.py")


def _web_page(predictor, value, tmp_path):
    return _app().vocabulary_from_text(value)


def _config(predictor, value, tmp_path):
    cfg = predictor.cfg.clone()
    cfg.defrost()
    cfg.MODEL.GRIDCLIP.CLASS_NAMES, cfg.MODEL.GRIDCLIP.VOCABULARY = [], ""
    if isinstance(value, str):
        cfg.MODEL.GRIDCLIP.VOCABULARY = value
    else:
        cfg.MODEL.GRIDCLIP.CLASS_NAMES = list(value)
    return vocabulary_from_cfg(cfg)[0]


def _dump_tool(predictor, value, tmp_path):
    out = str(tmp_path / "dumped.npy")
    argv = ["--clip", "", "--arch", "RNtiny", "--vocabulary", "custom"]
    dump.dump_text_embeddings(
        dump.get_parser().parse_args(argv + ["--custom-vocabulary", value, "--out", out])
    )
    return json.loads((tmp_path / "dumped.json").read_text())["names"]


# entry point -> (function, the kinds of value it can be given)
ENTRY_POINTS = {
    "predictor.set_vocabulary": (_set_vocabulary, (str, list)),
    "GridCLIPPredictor(vocabulary=...)": (_predictor_argument, (str, list)),
    "demo --custom-vocabulary": (_demo, (str,)),
    "web page": (_web_page, (str,)),
    "config": (_config, (str, list)),
    "dump_text_embeddings --custom-vocabulary": (_dump_tool, (str,)),
}


@pytest.mark.parametrize("entry_point", list(ENTRY_POINTS))
@pytest.mark.parametrize("case, value, expected", CASES, ids=[c[0] for c in CASES])
def test_every_entry_point_parses_alike(
    predictor, files, tmp_path, entry_point, case, value, expected
):
    function, kinds = ENTRY_POINTS[entry_point]
    if not isinstance(value, kinds):
        pytest.skip(f"{entry_point} takes no {type(value).__name__}")
    expected = EXCEPTIONS.get(entry_point, {}).get(case, expected)
    if expected is None:
        pytest.skip(f"not a vocabulary for {entry_point}")
    if isinstance(value, str):
        value = value.format(dir=files)
    if isinstance(expected, tuple):
        error, pattern = expected
        with pytest.raises(error, match=pattern.format(dir=files)):
            function(predictor, value, tmp_path)
    else:
        assert function(predictor, value, tmp_path) == [n.format(dir=files) for n in expected]


def test_the_rows_of_a_npy_are_its_names_embeddings(predictor, files):
    """A .npy given for a vocabulary is used for its rows (checked against the model), by the
    predictor's set_vocabulary and its vocabulary argument alike; the same names given as a list
    embed to the same rows."""
    npy = os.path.join(files, "kite_zebra.npy")
    rows = torch.nn.functional.normalize(torch.from_numpy(np.load(npy)), dim=1)
    predictor.set_vocabulary(npy)
    assert predictor.vocabulary == ["kite", "zebra"]
    torch.testing.assert_close(predictor.model.head.classifier.embeddings, rows)
    cfg = config_with_vocabulary(predictor.cfg, npy)
    assert cfg.MODEL.GRIDCLIP.TEXT_EMBEDDINGS == npy
    predictor.set_vocabulary(["flag"])
    predictor._embeddings.clear()  # embed, not the cached rows
    predictor.set_vocabulary(["kite", "zebra"])
    torch.testing.assert_close(predictor.model.head.classifier.embeddings, rows, atol=1e-5, rtol=0)


def test_the_web_page_answers_a_file_name_with_a_message(predictor, files):
    page = _app().DetectionPage(predictor)
    image = np.zeros((64, 64, 3), np.uint8)
    before = predictor.vocabulary
    drawn, rows, message = page.detect(image, os.path.join(files, "names.txt"), 0.5)
    assert drawn is None and rows == [] and predictor.vocabulary == before
    assert message.startswith("Vocabulary: ") and "names a file" in message, message


def test_a_refused_vocabulary_builds_nothing(monkeypatch):
    from gridclip_d2 import predictor as predictor_module

    monkeypatch.setattr(predictor_module, "build_model", lambda cfg: pytest.fail("built"))
    cfg = demo.setup_cfg(
        demo.get_parser().parse_args(
            ["--config-file", CONFIG, "--input", "x.jpg", "--opts"] + RANDOM_CLIP
        )
    )
    with pytest.raises(ValueError, match=r"vocabulary: item 0 is 1 \(int\)"):
        GridCLIPPredictor(cfg, vocabulary=[1, None, 2.5])
