"""The model's vocabulary: the ordered class names a GridCLIP model is built with, from its config.

A model builds from its config alone; the names come from the first of:

1. ``MODEL.GRIDCLIP.CLASS_NAMES``: a list of names;
2. ``MODEL.GRIDCLIP.VOCABULARY``: ``"lvis"`` or ``"synthetic"`` (the built-in vocabularies), or a
   file: ``.txt`` (one category per line, synonyms after commas, as the demo's vocabulary files) or
   ``.json`` (a list of names, or an object with ``"names"``: e.g. a text-embedding sidecar);
3. the ``names`` of the sidecar (``FILE.json`` beside ``FILE.npy``) of
   ``MODEL.GRIDCLIP.TEXT_EMBEDDINGS``;
4. only when none of these is given, the ``thing_classes`` of ``DATASETS.TRAIN[0]`` (which must then
   be registered: the training json is read).

Setting both CLASS_NAMES and VOCABULARY is an error. The sidecar written by
``tools/dump_text_embeddings.py`` is checked whenever the ``.npy`` is loaded
(:func:`check_sidecar`): its names against the vocabulary, its CLIP architecture and text-tower
fingerprint against MODEL.CLIP.*, its prompts against MODEL.GRIDCLIP.PROMPT(_ENSEMBLE); a mismatch
names both sides.
"""

import json
import logging
import os
from collections import Counter
from typing import List, Optional, Sequence, Tuple

from detectron2.data import MetadataCatalog

__all__ = [
    "BUILTIN_VOCABULARIES",
    "read_vocabulary_file",
    "sidecar_path",
    "read_sidecar",
    "check_sidecar",
    "vocabulary_from_cfg",
    "explicit_vocabulary_from_cfg",
    "names_mismatch",
    "training_metadata",
]

logger = logging.getLogger(__name__)

BUILTIN_VOCABULARIES = ("lvis", "synthetic")


def _duplicates(names: Sequence[str]) -> List[str]:
    return sorted(n for n, k in Counter(names).items() if k > 1)


def read_vocabulary_file(path: str, what: str = "Vocabulary file") -> List[str]:
    """Names of a ``.txt`` (one category per line) or ``.json`` (list, or object with "names")
    file."""
    from ..data.vocabulary import get_vocabulary

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path} not found")
    if path.lower().endswith(".json"):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{what} {path} is not valid UTF-8 json ({e})") from None
        names = data.get("names") if isinstance(data, dict) else data
        if (
            not isinstance(names, list)
            or not names
            or not all(isinstance(n, str) and n for n in names)
        ):
            raise ValueError(
                f"{what} {path} must hold a non-empty list of names, "
                'or an object whose "names" is one'
            )
        duplicates = _duplicates(names)
        if duplicates:
            raise ValueError(f"{what} {path}: names appear twice: {duplicates[:10]}")
        return list(names)
    return [c["name"] for c in get_vocabulary("custom", file=path)]


def sidecar_path(npy_path: str) -> str:
    """``FILE.json`` of ``FILE.npy``."""
    return os.path.splitext(npy_path)[0] + ".json"


def read_sidecar(npy_path: str) -> Optional[dict]:
    """The sidecar of a text-embedding ``.npy`` as a dict, or None when there is none."""
    path = sidecar_path(npy_path)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(
            f"Sidecar {path} of the text embeddings {npy_path} is not valid UTF-8 json ({e})"
        ) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("names"), list):
        raise ValueError(f'Sidecar {path} of the text embeddings {npy_path} has no "names" list')
    return meta


def _show(names: Sequence[str], limit: int = 30) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)} names)"


def names_mismatch(
    have: Sequence[str], want: Sequence[str], have_what: str, want_what: str
) -> Optional[str]:
    """None when equal, else a message naming both lists and their first difference."""
    have, want = list(have), list(want)
    if have == want:
        return None
    first = next(
        (i for i, (a, b) in enumerate(zip(have, want)) if a != b), min(len(have), len(want))
    )
    detail = (
        f"first difference at class {first}: {have[first] if first < len(have) else '<none>'!r} vs "
        f"{want[first] if first < len(want) else '<none>'!r}"
    )
    have_set, want_set = set(have), set(want)
    only_have = [n for n in have if n not in want_set]
    only_want = [n for n in want if n not in have_set]
    extra = ""
    if only_have or only_want:
        extra = (
            f"; only in {have_what}: {_show(only_have, 10)}, "
            f"only in {want_what}: {_show(only_want, 10)}"
        )
    return f"{have_what} {_show(have)} differ from {want_what} {_show(want)}: {detail}{extra}"


def check_sidecar(
    npy_path: str,
    meta: dict,
    *,
    names: Optional[Sequence[str]],
    names_source: str,
    arch: str,
    fingerprint: str,
    prompts: Sequence[str],
) -> None:
    """Raise ValueError when the sidecar ``meta`` of ``npy_path`` does not describe embeddings of
    ``names`` made with CLIP ``arch`` / text ``fingerprint`` and ``prompts``."""
    side = sidecar_path(npy_path)
    if names is not None:
        problem = names_mismatch(
            meta["names"], names, f"the names in {side}", f"the vocabulary ({names_source})"
        )
        if problem:
            raise ValueError(
                f"Text embeddings {npy_path} (MODEL.GRIDCLIP.TEXT_EMBEDDINGS) do not fit: {problem}"
            )
    if meta.get("arch") is not None and meta["arch"] != arch:
        raise ValueError(
            f"Text embeddings {npy_path} were made with CLIP {meta['arch']!r} ({side}) "
            "but MODEL.CLIP.ARCH is "
            f"{arch!r}; rewrite them with tools/dump_text_embeddings.py --arch {arch}"
        )
    if meta.get("text_fingerprint") is None:
        logger.warning(
            "%s records no CLIP text fingerprint: the weights behind %s cannot be checked",
            side,
            npy_path,
        )
    elif meta["text_fingerprint"] != fingerprint:
        raise ValueError(
            f"Text embeddings {npy_path} were made with CLIP weights "
            f"{meta.get('clip_weights')!r} (text "
            f"fingerprint {meta['text_fingerprint']}, {side}) "
            "but MODEL.CLIP.WEIGHTS gives text fingerprint "
            f"{fingerprint}: other weights. "
            "Rewrite them with tools/dump_text_embeddings.py and the same weights"
        )
    if meta.get("prompts") is not None and list(meta["prompts"]) != list(prompts):
        raise ValueError(
            f"Text embeddings {npy_path} were made with prompts {_show(meta['prompts'], 3)} "
            f"({side}) but "
            f"MODEL.GRIDCLIP.PROMPT / PROMPT_ENSEMBLE give {_show(list(prompts), 3)}: "
            "a vocabulary named "
            "later would be embedded differently from the trained classifier"
        )


def explicit_vocabulary_from_cfg(cfg) -> Optional[Tuple[List[str], str]]:
    """(names, source) from CLASS_NAMES or VOCABULARY, else None."""
    g = cfg.MODEL.GRIDCLIP
    names, vocabulary = list(g.CLASS_NAMES), g.VOCABULARY
    if names and vocabulary:
        raise ValueError(
            f"MODEL.GRIDCLIP.CLASS_NAMES ({len(names)} names) "
            f"and MODEL.GRIDCLIP.VOCABULARY ({vocabulary!r}) "
            "are both set: give one"
        )
    if names:
        bad = [n for n in names if not isinstance(n, str) or not n.strip()]
        if bad:
            raise ValueError(f"MODEL.GRIDCLIP.CLASS_NAMES holds empty or non-text names: {bad[:5]}")
        duplicates = _duplicates(names)
        if duplicates:
            raise ValueError(f"MODEL.GRIDCLIP.CLASS_NAMES: names appear twice: {duplicates[:10]}")
        return [str(n) for n in names], "MODEL.GRIDCLIP.CLASS_NAMES"
    if vocabulary:
        if vocabulary in BUILTIN_VOCABULARIES:
            from ..data.vocabulary import get_vocabulary

            return [
                c["name"] for c in get_vocabulary(vocabulary)
            ], f"MODEL.GRIDCLIP.VOCABULARY {vocabulary!r}"
        if not vocabulary.lower().endswith((".txt", ".json")):
            raise ValueError(
                f"MODEL.GRIDCLIP.VOCABULARY {vocabulary!r}: "
                f"expected {' or '.join(BUILTIN_VOCABULARIES)}, "
                "or a .txt / .json file of names"
            )
        names = read_vocabulary_file(vocabulary, "MODEL.GRIDCLIP.VOCABULARY file")
        return names, f"MODEL.GRIDCLIP.VOCABULARY {vocabulary}"
    return None


def vocabulary_from_cfg(cfg) -> Tuple[List[str], str]:
    """(class names, where they came from) following the order in the module docstring."""
    explicit = explicit_vocabulary_from_cfg(cfg)
    if explicit is not None:
        return explicit
    path = cfg.MODEL.GRIDCLIP.TEXT_EMBEDDINGS
    if path:
        meta = read_sidecar(path)
        if meta is not None:
            return [str(n) for n in meta["names"]], f"the sidecar of {path}"
    if not len(cfg.DATASETS.TRAIN):
        raise ValueError(
            "GridCLIP has no vocabulary: set MODEL.GRIDCLIP.CLASS_NAMES or "
            "MODEL.GRIDCLIP.VOCABULARY, give "
            "MODEL.GRIDCLIP.TEXT_EMBEDDINGS with its .json sidecar, "
            "or a training set (DATASETS.TRAIN)"
        )
    name = cfg.DATASETS.TRAIN[0]
    classes = MetadataCatalog.get(name).get("thing_classes", None)
    if not classes:
        raise ValueError(
            f"GridCLIP takes its vocabulary from the training set {name!r} (DATASETS.TRAIN[0]: no "
            "MODEL.GRIDCLIP.CLASS_NAMES / VOCABULARY / TEXT_EMBEDDINGS sidecar given), "
            "which has no "
            "'thing_classes': is it registered and spelled correctly?"
        )
    return list(classes), f"the classes of training set {name!r}"


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
