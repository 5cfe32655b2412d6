"""Vocabularies: the ordered category lists a classifier is built from.

``get_vocabulary(kind, custom=None, file=None) -> List[dict]``, each entry with ``id`` (1-based, in
order), ``name``, ``synonyms`` (list, the name first) and ``frequency`` ('r'/'c'/'f' or None):

- ``"lvis"``: LVIS v1's 1203 categories (Detectron2's ``lvis_v1_categories``), in id order, named as
  Detectron2's LVIS ``thing_classes`` (the first synonym);
- ``"synthetic"``: the embedded data set's categories (``gridclip_d2.data.synthetic``);
- ``"custom"``: names given as a comma-separated string / list (``custom``) or a text file
  (``file``) with one category per line, optionally followed by synonyms after commas
  (``"kite,paper kite"``); blank lines and lines starting with "#" are skipped.
"""

import os
from typing import List, Optional, Sequence, Union

__all__ = ["get_vocabulary", "VOCABULARY_KINDS"]

VOCABULARY_KINDS = ("lvis", "synthetic", "custom")


def _entries_from_categories(categories, name_is_first_synonym: bool = False) -> List[dict]:
    out = []
    for c in sorted(categories, key=lambda c: c["id"]):
        synonyms = list(c.get("synonyms") or [c["name"]])
        name = synonyms[0] if name_is_first_synonym else c["name"]
        if name not in synonyms:
            synonyms.insert(0, name)
        elif c["name"] not in synonyms:
            synonyms.append(c["name"])
        out.append(
            {"id": c["id"], "name": name, "synonyms": synonyms, "frequency": c.get("frequency")}
        )
    return out


def _parse_custom(lines: Sequence[str], source: str) -> List[dict]:
    out, seen = [], {}
    for lineno, line in enumerate(lines, start=1):
        parts = [p.strip() for p in line.split(",")]
        parts = [p for p in parts if p]
        if not parts or parts[0].startswith("#"):
            continue
        name = parts[0]
        if name in seen:
            raise ValueError(
                f"{source}: category {name!r} appears twice (entries {seen[name]} and {lineno})"
            )
        seen[name] = lineno
        synonyms = list(dict.fromkeys(parts))  # the name first, duplicates dropped
        out.append({"id": len(out) + 1, "name": name, "synonyms": synonyms, "frequency": None})
    return out


def get_vocabulary(
    kind: str, custom: Optional[Union[str, Sequence[str]]] = None, file: Optional[str] = None
) -> List[dict]:
    """The vocabulary ``kind`` (see the module docstring); raises on an empty or unknown one."""
    if kind == "lvis":
        from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES

        # Names as Detectron2's LVIS metadata has them (thing_classes = each category's first
        # synonym), so that the vocabulary equals the classes LVIS labels and evaluation index. They
        # differ from the json's "name" once: id 162 is "horned_cow" there, "bull" in "name".
        return _entries_from_categories(LVIS_CATEGORIES, name_is_first_synonym=True)
    if kind == "synthetic":
        # imported here: the synthetic data set's module is only needed for this vocabulary
        from .synthetic import SYNTHETIC_CATEGORIES

        return _entries_from_categories(SYNTHETIC_CATEGORIES)
    if kind != "custom":
        raise ValueError(f"Unknown vocabulary {kind!r}; choose one of {VOCABULARY_KINDS}")

    if (custom is None) == (file is None):
        raise ValueError(
            "A custom vocabulary needs exactly one of a name list or a vocabulary file"
        )
    if file is not None:
        if not os.path.isfile(file):
            raise FileNotFoundError(f"Vocabulary file {file} not found")
        try:
            with open(file, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError as e:
            raise ValueError(
                f"Vocabulary file {file} is not UTF-8 text (byte {e.start}: {e.reason})"
            ) from None
        entries = _parse_custom(text.splitlines(), f"Vocabulary file {file}")
        if not entries:
            raise ValueError(f"Vocabulary file {file} holds no category names")
        return entries
    if isinstance(custom, str):
        # a comma-separated list: each name its own category (no synonyms)
        lines = custom.split(",")
    else:
        lines = [str(n).replace(",", " ") for n in custom]
    entries = _parse_custom(lines, "Custom vocabulary")
    if not entries:
        raise ValueError(f"Custom vocabulary {custom!r} holds no category names")
    return entries
