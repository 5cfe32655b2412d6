"""The sidecar of a text-embedding ``.npy``: ``FILE.json`` beside ``FILE.npy``, naming its rows.

``tools/dump_text_embeddings.py`` writes both (:func:`write_sidecar`). The sidecar is a json object:

- ``names``: the class of each row, in order (the only required entry);
- ``synonyms``: per class, the names its row averages over (null: the name alone);
- ``prompts``: the prompt templates; ``arch``: the CLIP architecture; ``clip_weights``: what
  ``--clip`` was; ``text_fingerprint``: 16 hex digits identifying the CLIP text tower
  (``gridclip_d2.modeling.clip_weights.text_fingerprint``); ``seed``: the random CLIP's seed;
- ``vocabulary`` (the built-in name or "custom"), ``shape`` and ``normalized``: informative.

Whenever the rows are loaded the sidecar is checked (:func:`check_sidecar`): its names against the
vocabulary, its architecture, text fingerprint and prompts against the model's; a mismatch names
both sides. Computing the model's fingerprint needs its CLIP weights: ``gridclip_d2.modeling`` does
that and passes the string here.
"""

import json
import logging
import os
from typing import List, Optional, Sequence

from ..atomic_write import atomic_write
from .names import names_mismatch, show_names

__all__ = [
    "sidecar_path",
    "read_sidecar",
    "sidecar_names",
    "write_sidecar",
    "check_sidecar",
]

logger = logging.getLogger(__name__)


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


def sidecar_names(npy_path: str) -> Optional[List[str]]:
    """The names the sidecar of ``npy_path`` gives its rows; None when the ``.npy`` or its sidecar
    is missing. Whether a ``.npy`` can serve a vocabulary: ``sidecar_names(path) == names``."""
    if not npy_path or not os.path.isfile(npy_path):
        return None
    meta = read_sidecar(npy_path)
    return None if meta is None else [str(n) for n in meta["names"]]


def write_sidecar(
    npy_path: str,
    *,
    names: Sequence[str],
    synonyms: Optional[Sequence[Sequence[str]]],
    prompts: Sequence[str],
    clip_weights: str,
    arch: str,
    text_fingerprint: str,
    seed: Optional[int],
    shape: Sequence[int],
    vocabulary: str,
) -> str:
    """Write the sidecar of ``npy_path`` (atomically: a previous one stays whole on failure);
    returns its path."""
    meta = {
        "vocabulary": vocabulary,
        "names": list(names),
        "synonyms": None if synonyms is None else [list(s) for s in synonyms],
        "prompts": list(prompts),
        "clip_weights": clip_weights,
        "arch": arch,
        "text_fingerprint": text_fingerprint,
        "seed": seed,
        "shape": list(shape),
        "normalized": True,
    }
    path = sidecar_path(npy_path)
    atomic_write(path, lambda f: f.write(json.dumps(meta, indent=1).encode("utf-8")))
    return path


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
    ``names`` (None: not checked) made with CLIP ``arch`` / text ``fingerprint`` and ``prompts``."""
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
            f"but MODEL.CLIP.ARCH is {arch!r}; rewrite them with "
            f"tools/dump_text_embeddings.py --arch {arch}"
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
            f"{meta.get('clip_weights')!r} (text fingerprint {meta['text_fingerprint']}, {side}) "
            f"but MODEL.CLIP.WEIGHTS gives text fingerprint {fingerprint}: other weights. "
            "Rewrite them with tools/dump_text_embeddings.py and the same weights"
        )
    if meta.get("prompts") is not None and list(meta["prompts"]) != list(prompts):
        raise ValueError(
            f"Text embeddings {npy_path} were made with prompts {show_names(meta['prompts'], 3)} "
            f"({side}) but MODEL.GRIDCLIP.PROMPT / PROMPT_ENSEMBLE give "
            f"{show_names(list(prompts), 3)}: a vocabulary named later would be embedded "
            "differently from the trained classifier"
        )
