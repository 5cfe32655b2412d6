"""The vocabulary: the ordered class names a classifier's rows follow, wherever they come from.

- :mod:`.names`: :class:`Vocabulary` and the rules every vocabulary obeys (non-empty string names,
  none twice, at least one);
- :mod:`.builtin`: the built-in vocabularies ``"lvis"`` and ``"synthetic"``;
- :mod:`.parse`: :func:`parse_vocabulary`, the one parsing rule of every entry point (lists,
  comma-separated strings, ``.txt`` / ``.json`` / ``.npy`` files; ``allow_files=False`` for a web
  page);
- :mod:`.sidecar`: the ``FILE.json`` beside a text-embedding ``FILE.npy`` (path, read, write,
  check);
- :mod:`.from_config`: the model's vocabulary from its config alone (:func:`model_vocabulary`).

Layers: this package imports nothing of ``gridclip_d2.data``, ``.modeling``, ``.engine``,
``.pretrain`` or ``.predictor``; they import it. The text embeddings of a vocabulary (CLIP) are
``gridclip_d2.modeling.text_classifier.vocabulary_text_embeddings``.
"""

from .builtin import (
    BUILTIN_VOCABULARIES,
    SYNTHETIC_COLOURS,
    SYNTHETIC_CONCEPT_NAMES,
    SYNTHETIC_NAMES,
    SYNTHETIC_NEW_CONCEPTS,
    SYNTHETIC_SHAPES,
    VOCABULARY_CHOICES,
    builtin_vocabulary,
)
from .exemplar import (
    ImageExemplar,
    has_exemplars,
    parse_box,
    parse_query_image,
    split_vocabulary_entries,
)
from .from_config import (
    explicit_vocabulary_from_cfg,
    model_vocabulary,
    training_metadata,
    vocabulary_from_cfg,
)
from .names import Vocabulary, check_names, names_mismatch
from .parse import FILE_SUFFIXES, VocabularyLike, is_vocabulary_file, parse_vocabulary
from .sidecar import check_sidecar, read_sidecar, sidecar_names, sidecar_path, write_sidecar

__all__ = [
    "BUILTIN_VOCABULARIES",
    "FILE_SUFFIXES",
    "SYNTHETIC_COLOURS",
    "SYNTHETIC_CONCEPT_NAMES",
    "SYNTHETIC_NAMES",
    "SYNTHETIC_NEW_CONCEPTS",
    "SYNTHETIC_SHAPES",
    "VOCABULARY_CHOICES",
    "Vocabulary",
    "VocabularyLike",
    "ImageExemplar",
    "has_exemplars",
    "parse_box",
    "parse_query_image",
    "split_vocabulary_entries",
    "builtin_vocabulary",
    "check_names",
    "check_sidecar",
    "explicit_vocabulary_from_cfg",
    "is_vocabulary_file",
    "model_vocabulary",
    "names_mismatch",
    "parse_vocabulary",
    "read_sidecar",
    "sidecar_names",
    "sidecar_path",
    "training_metadata",
    "vocabulary_from_cfg",
    "write_sidecar",
]
