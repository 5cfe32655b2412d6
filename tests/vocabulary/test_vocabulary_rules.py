"""gridclip_d2.vocabulary: the built-in vocabularies, the parsing rule in detail (file formats,
synonyms, comments, errors) and the sidecar. The same inputs through every entry point:
tests/test_vocabulary_entry_points.py."""

import json
import pathlib

import numpy as np
import pytest

from detectron2.data import MetadataCatalog

from gridclip_d2.vocabulary import (
    SYNTHETIC_NAMES,
    Vocabulary,
    builtin_vocabulary,
    is_vocabulary_file,
    names_mismatch,
    parse_vocabulary,
    read_sidecar,
    sidecar_names,
    sidecar_path,
    write_sidecar,
)


def test_builtin_vocabularies():
    lvis = builtin_vocabulary("lvis")
    assert len(lvis) == 1203 and lvis.source == "the built-in vocabulary 'lvis'"
    assert lvis.names[0] == "aerosol_can" and lvis.synonyms[0] == ("aerosol_can", "spray_can")
    # The names are the classes LVIS's labels index (Detectron2's thing_classes), "horned_cow"
    # included, with the json's "name" among the synonyms.
    assert list(lvis.names) == MetadataCatalog.get("lvis_v1_val").thing_classes
    assert lvis.names[161] == "horned_cow" and "bull" in lvis.synonyms[161]

    from gridclip_d2.data.synthetic import SYNTHETIC_CATEGORIES
    from gridclip_d2.data.synthetic_shapes import CATEGORY_NAMES

    synthetic = builtin_vocabulary("synthetic")
    assert synthetic.names == SYNTHETIC_NAMES == CATEGORY_NAMES  # the data set draws these names
    assert list(synthetic.names) == [
        c["name"] for c in sorted(SYNTHETIC_CATEGORIES, key=lambda c: c["id"])
    ]
    assert synthetic.synonyms == tuple((n,) for n in SYNTHETIC_NAMES)
    with pytest.raises(ValueError, match="Unknown built-in vocabulary 'coco'.*lvis, synthetic"):
        builtin_vocabulary("coco")


def test_names_lists_and_strings():
    custom = parse_vocabulary("zebra, traffic cone ,kite")
    assert custom.names == ("zebra", "traffic cone", "kite") and custom.embeddings_file is None
    assert custom.synonyms == (("zebra",), ("traffic cone",), ("kite",))
    assert parse_vocabulary(["a", "b"]).names == ("a", "b")
    assert parse_vocabulary(("a", " b ")).names == ("a", "b")
    assert parse_vocabulary(["kite, paper kite"]).names == ("kite, paper kite",)  # a list: verbatim
    assert parse_vocabulary(custom) is custom  # parsed once, passed on as it is
    # files by suffix only; a string that merely exists on disk is still names
    assert is_vocabulary_file(" a.TXT ") and is_vocabulary_file(pathlib.Path("x"))
    assert not is_vocabulary_file("kite, names.txt ,zebra") and not is_vocabulary_file(["a.txt"])
    assert parse_vocabulary(["names.txt"]).names == ("names.txt",)  # list items are never files


def test_text_files(tmp_path):
    f = tmp_path / "names.txt"
    f.write_text("# my classes\nkite, paper kite, kite\n\n  # indented comment\nzebra\n")
    vocabulary = parse_vocabulary(str(f), what="--custom-vocabulary")
    assert vocabulary.names == ("kite", "zebra")
    assert vocabulary.synonyms == (("kite", "paper kite"), ("zebra",))
    assert vocabulary.source == f"--custom-vocabulary {f}"
    assert parse_vocabulary(f).names == ("kite", "zebra")  # an os.PathLike is a file
    upper = tmp_path / "NAMES.TXT"
    upper.write_text("a\nb\n")
    assert parse_vocabulary(f" {upper} ").names == ("a", "b")

    twice = tmp_path / "twice.txt"
    twice.write_text("kite\nzebra\nkite, paper kite\n")
    with pytest.raises(ValueError, match=r"twice.txt: 'kite' given more than once \(lines 1 and 3"):
        parse_vocabulary(str(twice))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    with pytest.raises(ValueError, match="empty vocabulary: vocabulary file .*empty.txt holds no"):
        parse_vocabulary(str(empty))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin.txt is not UTF-8 text"):
        parse_vocabulary(str(latin))
    with pytest.raises(FileNotFoundError, match="W: vocabulary file .*nope.txt not found"):
        parse_vocabulary(str(tmp_path / "nope.txt"), what="W")


def test_json_and_npy_files(tmp_path):
    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps(["x", "y z"]))
    assert parse_vocabulary(str(as_list)).names == ("x", "y z")
    as_object = tmp_path / "object.json"
    as_object.write_text(json.dumps({"names": ["a", "b"], "prompts": ["a {}"]}))
    assert parse_vocabulary(str(as_object)).names == ("a", "b")
    for bad, message in [
        ({"classes": ["a"]}, 'must hold a list of names, or an object whose "names"'),
        (["a", 3], r"item 1 is 3 \(int\)"),
        (["a", "a"], r"'a' given more than once \(item 0 and item 1\)"),
        ([], "empty vocabulary"),
    ]:
        as_object.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            parse_vocabulary(str(as_object))
    as_object.write_text("{not json")
    with pytest.raises(ValueError, match="object.json is not json"):
        parse_vocabulary(str(as_object))

    npy = str(tmp_path / "emb.npy")
    np.save(npy, np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="has no sidecar .*emb.json naming its rows"):
        parse_vocabulary(npy)
    write_sidecar(
        npy,
        names=["kite", "zebra"],
        synonyms=[["kite", "paper kite"], ["zebra"]],
        prompts=["a {}"],
        clip_weights="",
        arch="RNtiny",
        text_fingerprint="0" * 16,
        seed=0,
        shape=(2, 4),
        vocabulary="custom",
    )
    vocabulary = parse_vocabulary(npy)
    assert vocabulary.names == ("kite", "zebra") and vocabulary.embeddings_file == npy
    assert vocabulary.synonyms == (("kite", "paper kite"), ("zebra",))
    # the web page's rule: a file is refused, whatever its kind and whether or not it exists
    for value in (npy, str(as_list), "missing.txt", pathlib.Path(npy)):
        with pytest.raises(ValueError, match="names a file .*only class names are taken here"):
            parse_vocabulary(value, allow_files=False)
    with pytest.raises(ValueError, match="expected a .txt / .json / .npy file"):
        parse_vocabulary(pathlib.Path(tmp_path / "names.csv"))


def test_bad_values_are_named():
    with pytest.raises(ValueError, match="empty vocabulary"):
        parse_vocabulary(" , ")
    with pytest.raises(ValueError, match="empty vocabulary"):
        parse_vocabulary([])
    with pytest.raises(ValueError, match="'kite' given more than once"):
        parse_vocabulary("kite,zebra,kite")
    with pytest.raises(ValueError, match=r"W: item 0 is 1 \(int\); item 1 is None .*item 2 is 2.5"):
        parse_vocabulary([1, None, 2.5], what="W")
    with pytest.raises(TypeError, match="a vocabulary is a list of class names.*not a int"):
        parse_vocabulary(3)
    with pytest.raises(ValueError, match="'a' given more than once"):
        Vocabulary(("a", "a"))


def test_sidecar_round_trip_and_names_mismatch(tmp_path):
    npy = str(tmp_path / "v.npy")
    assert read_sidecar(npy) is None and sidecar_names(npy) is None
    path = write_sidecar(
        npy,
        names=["a", "b"],
        synonyms=None,
        prompts=["a {}"],
        clip_weights="RN50",
        arch="RN50",
        text_fingerprint="f" * 16,
        seed=None,
        shape=(2, 8),
        vocabulary="custom",
    )
    assert path == sidecar_path(npy) == str(tmp_path / "v.json")
    meta = read_sidecar(npy)
    assert meta["names"] == ["a", "b"] and meta["text_fingerprint"] == "f" * 16
    assert meta["shape"] == [2, 8] and meta["normalized"] is True and meta["synonyms"] is None
    assert sidecar_names(npy) is None  # no .npy: nothing to serve
    np.save(npy, np.ones((2, 8), np.float32))
    assert sidecar_names(npy) == ["a", "b"]
    (tmp_path / "v.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match='v.json of the text embeddings .* has no "names" list'):
        read_sidecar(npy)

    assert names_mismatch(["a", "b"], ["a", "b"], "x", "y") is None
    message = names_mismatch(["a", "b", "c"], ["a", "c", "d"], "the file", "the model")
    assert "first difference at class 1: 'b' vs 'c'" in message
    assert "only in the file: ['b'] (1 names)" in message
    assert "only in the model: ['d'] (1 names)" in message
