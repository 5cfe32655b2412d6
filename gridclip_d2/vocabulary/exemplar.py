"""Vocabulary entries given by an example image instead of a name's text: "find more like this".

An :class:`ImageExemplar` names a class by a region of an image (``box``, XYXY pixels; None: the
whole image). Its classifier row is the CLIP image encoder's embedding of that region (the
model's own CLIP weights, the teacher's preprocessing; see
``gridclip_d2.modeling.exemplars``): the image-level alignment trains the grid towards CLIP's
image embeddings, so such a row classifies grid cells like a text row does. Several exemplars of
one name are averaged into one row.

- :func:`parse_query_image`: the demo's ``--query-image NAME=PATH[:x0,y0,x1,y1]``; :func:`parse_box`
  the web page's box field;
- :func:`split_vocabulary_entries`: a list mixing names and exemplars -> the row names in order,
  which of them are text, and each image name's exemplars.

Only the syntax is checked here; the image itself (readable, the box inside it and not empty) is
checked where it is read (``GridCLIPPredictor``), naming the exemplar.
"""

import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .names import check_names, prefixed

__all__ = [
    "ImageExemplar",
    "parse_box",
    "parse_query_image",
    "split_vocabulary_entries",
    "has_exemplars",
]

Box = Tuple[float, float, float, float]


@dataclass(frozen=True)
class ImageExemplar:
    """A class given by an example: detections of objects like ``image``'s region ``box`` are
    named ``name``. ``image``: a path, a PIL image, or an H x W x 3 uint8 RGB array; ``box``: XYXY
    pixels of that image, or None for the whole image."""

    name: str
    image: Any
    box: Optional[Box] = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(
                f"image exemplar: the name must be a non-blank string, got {self.name!r}"
            )
        object.__setattr__(self, "name", self.name.strip())
        if self.box is not None:
            object.__setattr__(self, "box", _box(self.box, f"image exemplar {self.name!r}"))

    def describe(self) -> str:
        """``name=PATH[:box]`` (or the image's kind), for messages."""
        where = (
            os.fspath(self.image)
            if isinstance(self.image, (str, os.PathLike))
            else ("(a PIL image)" if hasattr(self.image, "convert") else "(an image array)")
        )
        box = "" if self.box is None else ":" + ",".join(f"{v:g}" for v in self.box)
        return f"{self.name}={where}{box}"


def _box(values, what: str) -> Box:
    try:
        box = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: a box is four numbers x0,y0,x1,y1, got {values!r}") from None
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        raise ValueError(f"{what}: a box is four finite numbers x0,y0,x1,y1, got {values!r}")
    if box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"{what}: the box {list(box)} is empty (it needs x1 > x0 and y1 > y0)")
    return box


def parse_box(text: str, what: str = "box") -> Optional[Box]:
    """``"x0, y0, x1, y1"`` (pixels; commas and/or spaces) as a box; None for blank text."""
    pieces = str(text or "").replace(",", " ").split()
    return _box(pieces, what) if pieces else None


def parse_query_image(text: str, what: str = "--query-image") -> ImageExemplar:
    """``NAME=PATH`` (the whole image) or ``NAME=PATH:x0,y0,x1,y1`` (a box in its pixels). A path
    that itself holds ":" is read whole unless what follows the last ":" is four numbers."""
    name, sep, rest = str(text).partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise ValueError(
            f"{what}: expected NAME=PATH or NAME=PATH:x0,y0,x1,y1, got {text!r} "
            "(e.g. --query-image 'pink star=photos/star.jpg:10,20,60,70')"
        )
    path, box = rest.strip(), None
    head, colon, tail = path.rpartition(":")
    if colon and len(tail.split(",")) == 4:
        box, path = _box(tail.split(","), f"{what} {text!r}"), head
    return ImageExemplar(name.strip(), path, box)


def has_exemplars(value) -> bool:
    """Whether ``value`` is a list/tuple holding at least one :class:`ImageExemplar`."""
    return isinstance(value, (list, tuple)) and any(isinstance(v, ImageExemplar) for v in value)


def split_vocabulary_entries(
    entries: Sequence, what: str = "vocabulary"
) -> Tuple[List[str], List[str], Dict[str, List[ImageExemplar]]]:
    """(row names in order of first appearance, the text names among them, each image name's
    exemplars) of a list of class names (``str``) and :class:`ImageExemplar` s. A text name may
    appear once; an image name as often as it has exemplars (averaged); one name cannot be both."""
    text, exemplars, order = [], {}, []
    for i, entry in enumerate(entries):
        if isinstance(entry, ImageExemplar):
            if entry.name not in exemplars:
                order.append(entry.name)
            exemplars.setdefault(entry.name, []).append(entry)
        elif isinstance(entry, str):
            text.append(entry)
            order.append(entry.strip())
        else:
            raise TypeError(
                prefixed(
                    what,
                    f"item {i} is a {type(entry).__name__}: a vocabulary entry is a class name "
                    "(str) or an ImageExemplar(name, image, box)",
                )
            )
    text = check_names(text, what) if text else []
    both = sorted(set(text) & set(exemplars))
    if both:
        raise ValueError(
            prefixed(
                what,
                f"{', '.join(repr(n) for n in both)} given both as text and as image exemplar(s): "
                "give each name one kind (several exemplars of a name are averaged)",
            )
        )
    return order, text, exemplars
