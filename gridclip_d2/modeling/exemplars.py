"""Classifier rows from example images: the CLIP image encoder's embedding of an exemplar region.

The region is cut as the image-level alignment's teacher sees an object (the square of twice the
box's longer side around it, :func:`gridclip_d2.region_crops.framed_boxes`, resized to the
teacher's input size by :func:`gridclip_d2.region_crops.crop_and_resize`), embedded by the frozen
CLIP image encoder of MODEL.CLIP.WEIGHTS (:func:`.clip_resnet.build_clip_teacher`) and
L2-normalised, so a row lies where the alignment pulled the grid embeddings of such objects. A
whole image (no box) is resized as it is. Several exemplars of one name: the mean of their
normalised embeddings, normalised again.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..region_crops import crop_and_resize, framed_boxes
from .alignment import encode_teacher_images

__all__ = ["check_exemplar_box", "exemplar_crops", "exemplar_rows"]

Box = Tuple[float, float, float, float]


def check_exemplar_box(box: Optional[Sequence[float]], width: int, height: int, what: str) -> Box:
    """``box`` (XYXY pixels) if it is a non-empty box inside the ``width x height`` image; the
    whole image for None. ValueError naming ``what`` otherwise."""
    if box is None:
        return (0.0, 0.0, float(width), float(height))
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"{what}: the box {[x0, y0, x1, y1]} is empty (x1 > x0 and y1 > y0)")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise ValueError(
            f"{what}: the box {[x0, y0, x1, y1]} is not inside the image ({width} x {height} "
            "pixels: 0 <= x0 < x1 <= width, 0 <= y0 < y1 <= height)"
        )
    return (x0, y0, x1, y1)


def exemplar_crops(
    image: np.ndarray, box: Optional[Sequence[float]], size: int, what: str = "exemplar"
) -> torch.Tensor:
    """The teacher's input for one exemplar: 1 x 3 x S x S uint8 RGB (``image``: H x W x 3 uint8
    RGB; ``box``: XYXY pixels or None for the whole image)."""
    height, width = image.shape[:2]
    region = torch.tensor([check_exemplar_box(box, width, height, what)], dtype=torch.float64)
    if box is not None:
        region = framed_boxes(region, width, height)
    return crop_and_resize(image, region, size)


@torch.no_grad()
def exemplar_rows(
    teacher: nn.Module, crops: Sequence[torch.Tensor], groups: Sequence[str]
) -> Tuple[List[str], torch.Tensor]:
    """(names, C x D rows): ``crops[i]`` (1 x 3 x S x S uint8) is an exemplar of ``groups[i]``;
    one row per name, in order of first appearance, the normalised mean of its exemplars'
    normalised embeddings."""
    if len(crops) != len(groups) or not crops:
        raise ValueError(f"exemplar_rows: {len(crops)} crops for {len(groups)} names")
    embeddings = encode_teacher_images(teacher, torch.cat(list(crops)))  # M x D, normalised
    members: Dict[str, List[int]] = {}
    for i, name in enumerate(groups):
        members.setdefault(name, []).append(i)
    rows = torch.stack([embeddings[idx].mean(dim=0) for idx in members.values()])
    return list(members), F.normalize(rows, dim=-1)
