"""A vocabulary: the ordered class names a classifier's rows follow, and the checks on them.

:class:`Vocabulary` holds ``names`` (class ``i`` is ``names[i]``), ``synonyms`` (per class, the name
first; ``tools/dump_text_embeddings.py --avg-synonyms`` averages over them), ``source`` (where the
names came from, for messages) and ``embeddings_file`` (a text-embedding ``.npy`` whose rows embed
the names, checked against its sidecar when loaded; None: the names are embedded with the model's
CLIP).

Rules every vocabulary obeys (:func:`check_names`): each name is a ``str`` that is not blank (names
are stripped), no name appears twice, and there is at least one. Errors name the entry point or
option (``what``), the bad item and its position.
"""

import dataclasses
from collections import Counter
from typing import Callable, List, Optional, Sequence, Tuple

__all__ = ["Vocabulary", "check_names", "names_mismatch", "prefixed", "show_names"]


def prefixed(what: str, message: str) -> str:
    """``message`` after "``what``: " (the entry point or option), or alone when ``what`` is ""."""
    return f"{what}: {message}" if what else message


def _item(i: int) -> str:
    return f"item {i}"


def check_names(
    items: Sequence, what: str = "", position: Optional[Callable[[int], str]] = _item
) -> List[str]:
    """``items`` as stripped names, or ValueError naming ``what`` and the bad items with their
    ``position`` (e.g. "item 2"; None: no positions), or the names given twice."""
    bad = [
        (i, item) for i, item in enumerate(items) if not isinstance(item, str) or not item.strip()
    ]
    if bad:
        shown = "; ".join(
            f"{position(i) + ' ' if position else ''}is {item!r} ({type(item).__name__})"
            for i, item in bad[:5]
        )
        raise ValueError(
            prefixed(
                what,
                f"{shown}{'; ...' if len(bad) > 5 else ''}: not a class name "
                "(every class name must be a non-empty string)",
            )
        )
    names = [item.strip() for item in items]
    if not names:
        raise ValueError(prefixed(what, "empty vocabulary: no class names given"))
    twice = [n for n, k in Counter(names).items() if k > 1]
    if twice:
        places = ""
        if position:
            first = [i for i, n in enumerate(names) if n == twice[0]][:2]
            places = f" ({position(first[0])} and {position(first[1])})"
        shown = ", ".join(repr(n) for n in twice[:10])
        raise ValueError(prefixed(what, f"{shown} given more than once{places}"))
    return names


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Checked class names (see the module docstring); build it with :func:`parse_vocabulary`,
    :func:`builtin_vocabulary` or :func:`model_vocabulary` rather than by hand."""

    names: Tuple[str, ...]
    source: str = "the names given"
    synonyms: Optional[Tuple[Tuple[str, ...], ...]] = None  # None: each name alone
    embeddings_file: Optional[str] = None

    def __post_init__(self):
        object.__setattr__(self, "names", tuple(check_names(self.names, self.source)))
        if self.synonyms is None:
            object.__setattr__(self, "synonyms", tuple((n,) for n in self.names))
        elif len(self.synonyms) != len(self.names):
            raise ValueError(
                f"{self.source}: {len(self.synonyms)} synonym lists for {len(self.names)} names"
            )

    def __len__(self) -> int:
        return len(self.names)


def show_names(names: Sequence[str], limit: int = 30) -> str:
    """``names`` for a message: the first ``limit``, then their count."""
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
            f"; only in {have_what}: {show_names(only_have, 10)}, "
            f"only in {want_what}: {show_names(only_want, 10)}"
        )
    return (
        f"{have_what} {show_names(have)} differ from {want_what} {show_names(want)}: "
        f"{detail}{extra}"
    )
