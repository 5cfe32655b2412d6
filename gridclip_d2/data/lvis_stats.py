"""LVIS's per-category statistics: how many images show each category, and the frequency group
that count puts it in (LVIS rule: rare "r" < 10 training images, common "c" 10-99, frequent "f"
>= 100)."""

from collections import defaultdict
from typing import Dict, Hashable, Iterable, Tuple

__all__ = ["FREQUENCIES", "lvis_frequency", "images_per_category"]

FREQUENCIES = ("r", "c", "f")


def lvis_frequency(image_count: int) -> str:
    """'r', 'c' or 'f' for a category shown in ``image_count`` training images."""
    return "r" if image_count < 10 else ("c" if image_count < 100 else "f")


def images_per_category(pairs: Iterable[Tuple[Hashable, Hashable]]) -> Dict[Hashable, int]:
    """(category id, image id) of every annotation -> {category id: number of distinct images}.
    Categories without annotations are absent (``.get(c, 0)``)."""
    images = defaultdict(set)
    for category_id, image_id in pairs:
        images[category_id].add(image_id)
    return {c: len(ids) for c, ids in images.items()}
