"""Frozen text-embedding classifier: cosine similarity between features and class text embeddings.

Modelled on Detic's ``ZeroShotClassifier``: the ``C x D`` class embeddings (CLIP text embeddings of
the vocabulary, from a ``.npy`` written by ``tools/dump_text_embeddings.py`` or computed at build
time) are L2-normalised and kept in a buffer that is never trained. Unlike Detic's, the buffer is
non-persistent (checkpoints carry no vocabulary, so a model can be loaded with any vocabulary), the
temperature and bias belong to the head, and a row count that does not match the classes is an error
naming the file and both numbers. ``set_embeddings`` swaps the vocabulary at inference.

:func:`vocabulary_text_embeddings` is the one place that decides where a vocabulary's rows come
from, for the model's build, evaluation with a test set's classes and the predictor's vocabulary
swaps: the rows of a text-embedding ``.npy`` when its sidecar describes these names, this CLIP and
these prompts, else the names embedded with the model's CLIP.
"""

import functools
import logging
import os
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable

from ..clip_arch import get_arch
from ..vocabulary import check_names, check_sidecar, read_sidecar, sidecar_names, sidecar_path
from .clip_text import prompts_from_cfg, text_embeddings_from_cfg
from .text_fingerprint import clip_text_fingerprint_from_cfg

__all__ = [
    "TextClassifier",
    "checked_text_embeddings",
    "load_text_embeddings",
    "vocabulary_embeddings",
    "vocabulary_text_embeddings",
]

logger = logging.getLogger(__name__)


def _check_rows(path: str, rows: int, expected_rows: Optional[int]) -> None:
    if expected_rows is not None and rows != expected_rows:
        raise ValueError(
            f"Text embeddings {path} have {rows} rows but the model's vocabulary has "
            f"{expected_rows} classes: the rows must follow the vocabulary"
        )


def load_text_embeddings(path: str, expected_rows: Optional[int] = None) -> torch.Tensor:
    """C x D float32 L2-normalised embeddings from a ``.npy`` file, checked for shape and values."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Text embeddings {path} (MODEL.GRIDCLIP.TEXT_EMBEDDINGS) not found; write them with "
            'tools/dump_text_embeddings.py, or set MODEL.GRIDCLIP.TEXT_EMBEDDINGS "" to compute '
            "them from the vocabulary's names"
        )
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as e:
        raise ValueError(f"Text embeddings {path} are not a readable .npy array ({e})") from None
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
        raise ValueError(
            f"Text embeddings {path} must be a 2-d float array (classes x dim), got "
            f"{array.dtype} {array.shape}"
        )
    _check_rows(path, array.shape[0], expected_rows)
    if not np.isfinite(array).all() or (np.linalg.norm(array, axis=1) == 0).any():
        raise ValueError(f"Text embeddings {path} contain non-finite values or all-zero rows")
    return F.normalize(torch.from_numpy(array.astype(np.float32)), dim=1)


def checked_text_embeddings(
    cfg,
    path: str,
    names: Optional[Sequence[str]] = None,
    names_source: str = "the vocabulary",
    encode: Optional[Callable[[List[str]], torch.Tensor]] = None,
) -> Tuple[List[str], torch.Tensor]:
    """``(names, C x D embeddings)`` of a text-embedding ``.npy`` for the model of ``cfg``: loaded
    (:func:`load_text_embeddings`), its sidecar read once and checked against ``names``, the
    architecture and text-tower fingerprint of MODEL.CLIP, and the prompts (:func:`check_sidecar`).

    ``names`` None: the sidecar names the rows (an error when there is none). Names given and no
    sidecar: the rows are taken to follow ``names`` unchecked (a warning). With a sidecar, a few
    rows are embedded again (``encode``, default MODEL.CLIP.* and the prompts) and must equal the
    stored ones: a sidecar whose names were edited or reordered is an error."""
    embeddings = load_text_embeddings(path)
    meta = read_sidecar(path)
    if names is None:
        if meta is None:
            raise ValueError(
                f"{path} has no sidecar {sidecar_path(path)} naming its rows: "
                "pass the names as a list instead"
            )
        names, expected = [str(n) for n in meta["names"]], None
    else:
        names = expected = list(names)
    _check_rows(path, embeddings.shape[0], len(names))
    if meta is None:
        logger.warning(
            "Text embeddings %s have no sidecar %s: their rows are taken to follow %s unchecked",
            path,
            sidecar_path(path),
            names_source,
        )
    else:
        check_sidecar(
            path,
            meta,
            names=expected,
            names_source=names_source,
            arch=cfg.MODEL.CLIP.ARCH,
            fingerprint=clip_text_fingerprint_from_cfg(cfg),
            prompts=prompts_from_cfg(cfg),
        )
        synonyms = meta.get("synonyms")
        if synonyms:  # rows averaged over synonyms (dump_text_embeddings --avg-synonyms)
            encode = functools.partial(_encode_with_synonyms, cfg, dict(zip(names, synonyms)))
        _check_rows_are_the_names(path, embeddings, names, encode or _encoder_of(cfg))
    return names, embeddings


# Rows re-embedded to check that a .npy's rows are its sidecar's names: a few, evenly spread.
ROWS_CHECKED = 8
# The same CLIP text tower and prompts (the sidecar check above) give the same row up to float32
# rounding, ~1e-6 even across CPUs; another name's row is far further off than this.
ROW_COSINE_MIN = 0.9999


def _encoder_of(cfg) -> Callable[[List[str]], torch.Tensor]:
    return lambda names: text_embeddings_from_cfg(cfg, names)


def _encode_with_synonyms(cfg, synonyms_of: dict, names: List[str]) -> torch.Tensor:
    return text_embeddings_from_cfg(cfg, names, [synonyms_of[n] for n in names])


def _check_rows_are_the_names(path, embeddings, names, encode) -> None:
    """The sidecar's fingerprint and prompts match, but its names could still have been edited or
    reordered (rows embedded from other names would label boxes wrongly): re-embed ROWS_CHECKED
    evenly spread names and compare them with their rows."""
    rows = sorted({int(round(i)) for i in np.linspace(0, len(names) - 1, ROWS_CHECKED)})
    fresh = F.normalize(encode([names[i] for i in rows]).float(), dim=-1)
    stored = F.normalize(embeddings[rows].float(), dim=-1)
    cosine = (fresh * stored).sum(dim=-1)
    for i, c in zip(rows, cosine.tolist()):
        if c < ROW_COSINE_MIN:
            raise ValueError(
                f"{path}: row {i} is not the text embedding of {names[i]!r}, the name its sidecar "
                f"{sidecar_path(path)} gives it (cosine {c:.4f} with {names[i]!r} embedded now, "
                "with the same CLIP and prompts): the sidecar's names were edited or reordered. "
                "Make the file again with tools/dump_text_embeddings.py"
            )


def vocabulary_text_embeddings(
    cfg,
    names: Sequence[str],
    npy: Optional[str] = None,
    *,
    only_if_named: bool = False,
    names_source: str = "the vocabulary",
    encode: Optional[Callable[[List[str]], torch.Tensor]] = None,
) -> torch.Tensor:
    """C x D text embeddings of ``names`` for the model of ``cfg``.

    With ``npy``, its rows (:func:`checked_text_embeddings`: the sidecar must list ``names`` and
    match MODEL.CLIP's architecture and text fingerprint and the prompts; any mismatch is an error).
    ``only_if_named``: ``npy`` is only used when its sidecar lists exactly ``names`` (a config's
    TEXT_EMBEDDINGS serving another vocabulary, or missing, is passed over). Otherwise ``names`` are
    embedded with ``encode`` (the model's CLIP text encoder) or, without one, MODEL.CLIP.* and
    MODEL.GRIDCLIP.PROMPT(_ENSEMBLE).
    """
    names = list(names)
    if npy and only_if_named and sidecar_names(npy) != names:
        npy = None
    if npy:
        _, embeddings = checked_text_embeddings(cfg, npy, names, names_source, encode)
        logger.info("Text embeddings of %s: the rows of %s", names_source, npy)
        return embeddings
    logger.debug(
        "Text embeddings of %s (%d classes): embedded with the model's CLIP weights and prompts",
        names_source,
        len(names),
    )
    return encode(names) if encode is not None else text_embeddings_from_cfg(cfg, names)


def vocabulary_embeddings(
    names: Optional[Sequence[str]],
    embeddings: Union[None, str, os.PathLike, np.ndarray, torch.Tensor],
    encode: Optional[Callable[[List[str]], torch.Tensor]] = None,
) -> Tuple[Optional[List[str]], torch.Tensor]:
    """
    A vocabulary given to ``GridCLIP.set_vocabulary``, checked: ``(names or None, C x D float32)``.

    Args:
        names: category names; embedded with ``encode`` unless ``embeddings`` are given too.
        embeddings: a C x D array/tensor or the path of a ``.npy`` holding one.
        encode: names -> C x D embeddings (the model's CLIP text encoder), or None.
    """
    if names is None and embeddings is None:
        raise ValueError("set_vocabulary needs `names`, `embeddings`, or both")
    if names is not None:
        if isinstance(names, str):
            raise TypeError("set_vocabulary(names=...) takes a list of names, not one string")
        names = check_names(list(names), "set_vocabulary(names=...)")
    if embeddings is None:
        if encode is None:
            raise ValueError(
                "this model was built without a text encoder; pass `embeddings` instead"
            )
        emb = encode(names)
    elif isinstance(embeddings, (str, os.PathLike)):
        emb = load_text_embeddings(os.fspath(embeddings))
    else:
        emb = embeddings
    if not isinstance(emb, torch.Tensor):
        emb = np.asarray(emb)
    emb = torch.as_tensor(emb, dtype=torch.float32)
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise ValueError(
            "set_vocabulary: embeddings must be a non-empty C x D matrix, got shape "
            f"{tuple(emb.shape)}"
        )
    if names is not None and len(names) != emb.shape[0]:
        raise ValueError(f"set_vocabulary: {emb.shape[0]} embeddings for {len(names)} names")
    return names, emb


class TextClassifier(nn.Module):
    """``forward(x: ... x D) -> ... x C`` cosine similarities with fixed class embeddings."""

    @configurable
    def __init__(self, embeddings: torch.Tensor):
        """
        Args:
            embeddings: C x D class embeddings (normalised here); kept fixed.
        """
        super().__init__()
        self.set_embeddings(embeddings)

    @classmethod
    def from_config(
        cls,
        cfg,
        names: Sequence[str],
        names_source: str = "the vocabulary",
        embeddings_file: Optional[str] = None,
    ):
        """``names``: the model's vocabulary (``gridclip_d2.vocabulary.model_vocabulary``). With
        ``embeddings_file`` (default: MODEL.GRIDCLIP.TEXT_EMBEDDINGS) the rows are read from the
        .npy, whose sidecar must describe these names, MODEL.CLIP's weights and the prompts;
        otherwise the names are embedded now (:func:`vocabulary_text_embeddings`)."""
        dim = get_arch(cfg.MODEL.CLIP.ARCH).embed_dim
        path = embeddings_file or cfg.MODEL.GRIDCLIP.TEXT_EMBEDDINGS
        embeddings = vocabulary_text_embeddings(cfg, names, path, names_source=names_source)
        source = f"Text embeddings {path}" if path else f"Text embeddings of {names_source}"
        if embeddings.shape[1] != dim:
            raise ValueError(
                f"{source} have dimension {embeddings.shape[1]} but CLIP {cfg.MODEL.CLIP.ARCH} "
                f"(MODEL.CLIP.ARCH) embeds in {dim}"
            )
        return {"embeddings": embeddings}

    def set_embeddings(self, embeddings: torch.Tensor) -> None:
        """Replace the vocabulary: ``embeddings`` C' x D (same D), normalised and kept fixed."""
        embeddings = torch.as_tensor(embeddings)
        if embeddings.dim() != 2 or embeddings.shape[0] == 0:
            raise ValueError(
                f"Class embeddings must be C x D with C > 0, got {tuple(embeddings.shape)}"
            )
        old = getattr(self, "embeddings", None)
        if old is not None and embeddings.shape[1] != old.shape[1]:
            raise ValueError(
                f"New class embeddings have dimension {embeddings.shape[1]}, the classifier "
                f"{old.shape[1]}: it takes embeddings of its CLIP embedding dim {old.shape[1]}, "
                f"not dim {embeddings.shape[1]}"
            )
        device = old.device if old is not None else embeddings.device
        embeddings = F.normalize(embeddings.detach().to(device=device, dtype=torch.float32), dim=1)
        self.register_buffer("embeddings", embeddings, persistent=False)  # C x D

    @property
    def num_classes(self) -> int:
        return self.embeddings.shape[0]

    @property
    def embed_dim(self) -> int:
        return self.embeddings.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ... x D (L2-normalised here, so any features work) -> ... x C cosine similarities."""
        x = F.normalize(x, dim=-1)
        return x @ self.embeddings.to(x.dtype).t()  # ... x C
