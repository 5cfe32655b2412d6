"""Regions of the image-level alignment: the whole image and its grid crops.

A grid ``g`` splits an image into ``g x g`` equal cells. For ``grids = [1, 2, 3]`` an image has
K = 1 + 4 + 9 = 14 regions, ordered grid by grid, each grid row-major (left to right, then top to
bottom). Boxes are XYXY in (float) pixels of the image they were computed on.

The same two functions serve the training mapper (teacher inputs made on the fly) and
``tools/dump_image_embeddings.py`` (teacher outputs cached on disk), so both see identical crops.
"""

from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image

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


def crop_and_resize(
    image: np.ndarray, boxes: Union[torch.Tensor, np.ndarray], size: int
) -> torch.Tensor:
    """
    Resize the region of each box (sub-pixel exact, clipped to the image) to ``size x size``
    (aspect ratio not kept) with PIL's bilinear filter, which antialiases when shrinking (as
    CLIP's own PIL preprocessing does) and is deterministic. The filter reads only the pixels
    the box touches (columns floor(x0)..ceil(x1) - 1, rows likewise).

    Args:
        image: H x W x 3 uint8 RGB array.
        boxes: K x 4 XYXY pixel boxes in ``image``'s coordinates.
        size: side S of the square output.

    Returns:
        K x 3 x S x S uint8 tensor (RGB).
    """
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3):
        shape = getattr(image, "shape", None)
        raise ValueError(f"crop_and_resize expects an H x W x 3 RGB array, got shape {shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"crop_and_resize expects a uint8 image, got {image.dtype}")
    if size < 1:
        raise ValueError(f"teacher input size must be positive, got {size}")
    boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    H, W = image.shape[:2]
    pil = Image.fromarray(image)
    out = np.empty((boxes.shape[0], size, size, 3), dtype=np.uint8)  # K x S x S x 3
    for k, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        x0, x1 = min(max(x0, 0.0), W), min(max(x1, 0.0), W)
        y0, y1 = min(max(y0, 0.0), H), min(max(y1, 0.0), H)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(
                f"alignment crop box {[x0, y0, x1, y1]} is empty inside the {W}x{H} image"
            )
        # cut the pixels the box touches first, so that the filter never reads beyond them
        c0, r0 = int(np.floor(x0)), int(np.floor(y0))
        c1, r1 = int(np.ceil(x1)), int(np.ceil(y1))
        crop = pil.crop((c0, r0, c1, r1))
        box = (x0 - c0, y0 - r0, x1 - c0, y1 - r0)
        out[k] = np.asarray(crop.resize((size, size), Image.BILINEAR, box=box))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()  # K x 3 x S x S
