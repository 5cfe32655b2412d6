"""The model's vocabulary, from its config alone.

The names come from the first of:

1. ``MODEL.GRIDCLIP.CLASS_NAMES``: a list of names (:func:`parse_vocabulary` of the list);
2. ``MODEL.GRIDCLIP.VOCABULARY``: ``"lvis"`` or ``"synthetic"`` (:mod:`.builtin`), else
   :func:`parse_vocabulary` of the string: a ``.txt`` / ``.json`` / ``.npy`` file, or
   comma-separated names. One word that is neither a built-in vocabulary nor a file is refused as a
   likely misspelling (a one-class vocabulary: ``CLASS_NAMES ["kite"]`` or ``VOCABULARY "kite,"``);
3. the ``names`` of the sidecar (``FILE.json``) of ``MODEL.GRIDCLIP.TEXT_EMBEDDINGS``;
4. only when none of these is given, the ``thing_classes`` of ``DATASETS.TRAIN[0]`` (which must then
   be registered: the training json is read).

Setting both CLASS_NAMES and VOCABULARY is an error. The rows embedding the names
(``Vocabulary.embeddings_file``) are those of ``MODEL.GRIDCLIP.TEXT_EMBEDDINGS``, or of a ``.npy``
given as VOCABULARY (two different ``.npy`` files are an error); loading them checks the sidecar
(``gridclip_d2.modeling.text_classifier``). None: the names are embedded with MODEL.CLIP.
"""

import dataclasses
import os
from typing import List, Optional, Sequence, Tuple

from detectron2.data import MetadataCatalog

from .builtin import BUILTIN_VOCABULARIES, builtin_vocabulary
from .names import Vocabulary
from .parse import is_vocabulary_file, parse_vocabulary
from .sidecar import read_sidecar

__all__ = [
    "model_vocabulary",
    "vocabulary_from_cfg",
    "explicit_vocabulary_from_cfg",
    "training_metadata",
]


def _explicit(cfg) -> Optional[Vocabulary]:
    """The vocabulary CLASS_NAMES or VOCABULARY give, else None."""
    g = cfg.MODEL.GRIDCLIP
    names, vocabulary = list(g.CLASS_NAMES), g.VOCABULARY
    if names and vocabulary:
        raise ValueError(
            f"MODEL.GRIDCLIP.CLASS_NAMES ({len(names)} names) and MODEL.GRIDCLIP.VOCABULARY "
            f"({vocabulary!r}) are both set: give one"
        )
    if names:
        return parse_vocabulary(names, what="MODEL.GRIDCLIP.CLASS_NAMES")
    if not vocabulary:
        return None
    if vocabulary in BUILTIN_VOCABULARIES:
        return dataclasses.replace(
            builtin_vocabulary(vocabulary), source=f"MODEL.GRIDCLIP.VOCABULARY {vocabulary!r}"
        )
    if not is_vocabulary_file(vocabulary) and "," not in vocabulary:
        raise ValueError(
            f"MODEL.GRIDCLIP.VOCABULARY {vocabulary!r}: expected "
            f"{' or '.join(BUILTIN_VOCABULARIES)}, a .txt / .json / .npy file, or comma-separated "
            f'names (one class: MODEL.GRIDCLIP.CLASS_NAMES ["{vocabulary}"])'
        )
    return parse_vocabulary(vocabulary, what="MODEL.GRIDCLIP.VOCABULARY")


def _same_file(a: str, b: str) -> bool:
    return os.path.abspath(os.path.expanduser(a)) == os.path.abspath(os.path.expanduser(b))


def model_vocabulary(cfg) -> Vocabulary:
    """The model's :class:`Vocabulary` following the order in the module docstring."""
    vocabulary = _explicit(cfg)
    path = cfg.MODEL.GRIDCLIP.TEXT_EMBEDDINGS
    if vocabulary is None and path:
        meta = read_sidecar(path)
        if meta is not None:
            vocabulary = Vocabulary(tuple(str(n) for n in meta["names"]), f"the sidecar of {path}")
    if vocabulary is None:
        vocabulary = _training_classes(cfg)
    if path:
        given = vocabulary.embeddings_file
        if given and not _same_file(given, path):
            raise ValueError(
                f"MODEL.GRIDCLIP.VOCABULARY {given} and MODEL.GRIDCLIP.TEXT_EMBEDDINGS {path} are "
                "two text-embedding files: give one"
            )
        vocabulary = dataclasses.replace(vocabulary, embeddings_file=path)
    return vocabulary


def _training_classes(cfg) -> Vocabulary:
    if not len(cfg.DATASETS.TRAIN):
        raise ValueError(
            "GridCLIP has no vocabulary: set MODEL.GRIDCLIP.CLASS_NAMES or "
            "MODEL.GRIDCLIP.VOCABULARY, give MODEL.GRIDCLIP.TEXT_EMBEDDINGS with its .json "
            "sidecar, or a training set (DATASETS.TRAIN)"
        )
    name = cfg.DATASETS.TRAIN[0]
    classes = MetadataCatalog.get(name).get("thing_classes", None)
    if not classes:
        raise ValueError(
            f"GridCLIP takes its vocabulary from the training set {name!r} (DATASETS.TRAIN[0]: no "
            "MODEL.GRIDCLIP.CLASS_NAMES / VOCABULARY / TEXT_EMBEDDINGS sidecar given), which has "
            "no 'thing_classes': is it registered and spelled correctly?"
        )
    return Vocabulary(tuple(classes), f"the classes of training set {name!r}")


def vocabulary_from_cfg(cfg) -> Tuple[List[str], str]:
    """``(class names, where they came from)`` of :func:`model_vocabulary`."""
    vocabulary = model_vocabulary(cfg)
    return list(vocabulary.names), vocabulary.source


def explicit_vocabulary_from_cfg(cfg) -> Optional[Tuple[List[str], str]]:
    """``(names, source)`` from CLASS_NAMES or VOCABULARY, else None (nothing names the vocabulary
    in the config itself)."""
    vocabulary = _explicit(cfg)
    return None if vocabulary is None else (list(vocabulary.names), vocabulary.source)


def training_metadata(cfg, names: Sequence[str]):
    """Metadata of DATASETS.TRAIN[0] when it is registered with exactly the classes ``names``, else
    None: evaluation, the demo, or a vocabulary other than the training set's need nothing from it
    (training checks the match itself, naming the differences)."""
    if not len(cfg.DATASETS.TRAIN) or cfg.DATASETS.TRAIN[0] not in MetadataCatalog.list():
        return None
    metadata = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    if list(metadata.get("thing_classes", None) or []) != list(names):
        return None
    return metadata
