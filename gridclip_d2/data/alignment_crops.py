"""Regions of the image-level alignment: the whole image and its grid crops.

A grid ``g`` splits an image into ``g x g`` equal cells. For ``grids = [1, 2, 3]`` an image has
K = 1 + 4 + 9 = 14 regions, ordered grid by grid, each grid row-major (left to right, then top to
bottom). Boxes are XYXY in (float) pixels of the image they were computed on.

``crop_and_resize`` (the pixels of a region, resized for the teacher) lives in
:mod:`gridclip_d2.region_crops`, shared with the model's proposal regions; it is re-exported here.
The same two functions serve the training mapper (teacher inputs made on the fly) and
``tools/dump_image_embeddings.py`` (teacher outputs cached on disk), so both see identical crops.
"""

from typing import Sequence

import numpy as np
import torch

from ..region_crops import crop_and_resize

__all__ = ["crop_boxes", "crop_and_resize", "num_regions"]


def num_regions(grids: Sequence[int]) -> int:
    """K = sum(g * g for g in grids)."""
    return sum(int(g) * int(g) for g in grids)


def crop_boxes(grids: Sequence[int], width: int, height: int) -> torch.Tensor:
    """
    Args:
        grids: grid sizes, e.g. [1, 2, 3] (each a positive int).
        width, height: image size in pixels.

    Returns:
        K x 4 float32 tensor of XYXY boxes: grid by grid, row-major within a grid.
    """
    if not grids:
        raise ValueError("alignment grids (MODEL.GRIDCLIP.IMAGE_ALIGN.GRIDS) must not be empty")
    bad = [g for g in grids if int(g) != g or g < 1]
    if bad:
        raise ValueError(
            f"alignment grids (MODEL.GRIDCLIP.IMAGE_ALIGN.GRIDS) must be positive ints; "
            f"got {list(grids)}"
        )
    if width <= 0 or height <= 0:
        raise ValueError(
            f"image size must be positive to make alignment crops, got {width}x{height}"
        )
    boxes = []
    for g in grids:
        g = int(g)
        xs = np.linspace(0.0, float(width), g + 1)
        ys = np.linspace(0.0, float(height), g + 1)
        for i in range(g):  # row
            for j in range(g):  # column
                boxes.append([xs[j], ys[i], xs[j + 1], ys[i + 1]])
    return torch.tensor(boxes, dtype=torch.float32)  # K x 4
