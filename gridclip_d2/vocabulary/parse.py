"""One parsing rule for a vocabulary given by a person, at every entry point.

``parse_vocabulary(value, *, allow_files=True, what="")`` serves ``GridCLIPPredictor`` (its
``vocabulary`` argument and ``set_vocabulary``), ``demo/demo.py --custom-vocabulary``, the web
page's text box (``allow_files=False``), ``tools/dump_text_embeddings.py --custom-vocabulary`` /
``--vocabulary-file``, ``tools/export_model.py --vocabulary`` and the config's
``MODEL.GRIDCLIP.CLASS_NAMES`` / ``VOCABULARY``. The rule:

- a list or tuple: its items are the names, in order. Each must be a ``str`` that is not blank
  (``1``, ``None``, ``2.5`` are refused, naming the item and its index); a name starting with "#"
  is a name; commas are kept;
- a string ending in ``.txt``, ``.json`` or ``.npy`` (any case; surrounding spaces ignored), or an
  ``os.PathLike``: a file, which must exist (FileNotFoundError naming it):

  - ``.txt``: one category per line, its synonyms after commas (``kite, paper kite``); blank lines
    and lines starting with "#" are skipped;
  - ``.json``: a list of names, or an object whose ``"names"`` is one (e.g. a sidecar);
  - ``.npy``: text embeddings from ``tools/dump_text_embeddings.py``: the names come from its
    sidecar (``FILE.json``, required), and the rows are the names' embeddings once the sidecar is
    checked against the model (``Vocabulary.embeddings_file``);

  with ``allow_files=False`` such a string is refused (a web page must never read server files);
- any other string: names separated by commas, each stripped; empty pieces are skipped.

Every result is checked as :mod:`.names` says: no name twice (ValueError naming them) and at least
one ("empty vocabulary"). ``what`` names the entry point or option in every message.
"""

import json
import os
from typing import List, Optional, Sequence, Union

from .names import Vocabulary, check_names, prefixed
from .sidecar import read_sidecar, sidecar_path

__all__ = ["FILE_SUFFIXES", "VocabularyLike", "is_vocabulary_file", "parse_vocabulary"]

FILE_SUFFIXES = (".txt", ".json", ".npy")
VocabularyLike = Union[Vocabulary, Sequence[str], str, os.PathLike]


def is_vocabulary_file(value) -> bool:
    """Whether ``parse_vocabulary`` takes ``value`` for a file (see the module docstring)."""
    if isinstance(value, os.PathLike):
        return True
    return isinstance(value, str) and value.strip().lower().endswith(FILE_SUFFIXES)


def parse_vocabulary(
    value: VocabularyLike, *, allow_files: bool = True, what: str = ""
) -> Vocabulary:
    """The :class:`Vocabulary` of ``value`` under the rule of the module docstring."""
    if isinstance(value, Vocabulary):
        return value
    if is_vocabulary_file(value):
        path = os.fspath(value).strip()
        if not allow_files:
            raise ValueError(
                prefixed(
                    what,
                    f"{path!r} names a file (it ends in {os.path.splitext(path)[1]}): only class "
                    "names are taken here, never files",
                )
            )
        return _read_file(path, what)
    if isinstance(value, str):
        names = check_names([p for p in value.split(",") if p.strip()], what, position=None)
        return Vocabulary(tuple(names), what or "the names given")
    if isinstance(value, (list, tuple)):
        return Vocabulary(tuple(check_names(value, what)), what or "the names given")
    raise TypeError(
        prefixed(
            what,
            "a vocabulary is a list of class names, a comma-separated string or a "
            f".txt / .json / .npy file, not a {type(value).__name__}",
        )
    )


def _read_file(path: str, what: str) -> Vocabulary:
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in FILE_SUFFIXES:
        raise ValueError(
            prefixed(what, f"vocabulary file {path}: expected a {' / '.join(FILE_SUFFIXES)} file")
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(prefixed(what, f"vocabulary file {path} not found"))
    source = f"{what} {path}" if what else path
    if suffix == ".npy":
        meta = read_sidecar(path)
        if meta is None:
            raise ValueError(
                prefixed(
                    what,
                    f"{path} has no sidecar {sidecar_path(path)} naming its rows: pass the names "
                    "as a list instead, or rewrite it with tools/dump_text_embeddings.py",
                )
            )
        names = check_names(meta["names"], f"{what or 'vocabulary'} sidecar {sidecar_path(path)}")
        synonyms = _synonyms(meta.get("synonyms"), len(names))
        return Vocabulary(tuple(names), source, synonyms, embeddings_file=path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ValueError(
            prefixed(what, f"vocabulary file {path} is not UTF-8 text ({e.reason})")
        ) from None
    if suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ValueError(prefixed(what, f"vocabulary file {path} is not json ({e})")) from None
        names = data.get("names") if isinstance(data, dict) else data
        if not isinstance(names, list):
            raise ValueError(
                prefixed(
                    what,
                    f'vocabulary file {path} must hold a list of names, or an object whose "names" '
                    "is one",
                )
            )
        return Vocabulary(tuple(check_names(names, source)), source)
    return _from_lines(text.splitlines(), path, source, what)


def _from_lines(lines: List[str], path: str, source: str, what: str) -> Vocabulary:
    """A ``.txt`` vocabulary: one category a line, synonyms after commas, '#' comments."""
    names, synonyms, line_of = [], [], {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip() or line.strip().startswith("#"):
            continue
        parts = list(dict.fromkeys(p.strip() for p in line.split(",") if p.strip()))
        if not parts:
            continue
        if parts[0] in line_of:
            raise ValueError(
                prefixed(
                    what,
                    f"vocabulary file {path}: {parts[0]!r} given more than once "
                    f"(lines {line_of[parts[0]]} and {lineno})",
                )
            )
        line_of[parts[0]] = lineno
        names.append(parts[0])
        synonyms.append(tuple(parts))
    if not names:
        raise ValueError(
            prefixed(what, f"empty vocabulary: vocabulary file {path} holds no class names")
        )
    return Vocabulary(tuple(names), source, tuple(synonyms))


def _synonyms(given, count: int) -> Optional[tuple]:
    """A sidecar's synonym lists when they are well formed for ``count`` names, else None."""
    if (
        isinstance(given, list)
        and len(given) == count
        and all(isinstance(s, list) and s and all(isinstance(n, str) for n in s) for s in given)
    ):
        return tuple(tuple(s) for s in given)
    return None
