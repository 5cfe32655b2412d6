"""The pixels of image regions, as the CLIP teacher sees them: one crop-and-resize and one framing.

* :func:`crop_and_resize`: the regions of XYXY boxes resized to a square (PIL's bilinear filter,
  which antialiases when shrinking, as CLIP's own PIL preprocessing does);
* :func:`framed_boxes`: the square around an object that CLIP sees of it, twice the box's longer
  side (at most the image's shorter side), centred on it and shifted to stay inside the image.
  ViLD crops proposals with some context for the same reason: a tight crop loses the shape's
  outline against its background.

Used by the mapper's grid regions (:mod:`gridclip_d2.data.alignment_crops`), the small CLIP's
object photos and zero-shot crops (:mod:`gridclip_d2.data.synthetic_shapes`) and the proposal
regions of the image-level alignment (:mod:`gridclip_d2.modeling.alignment`), so that the teacher is
measured on the crops it is used on. Imports nothing else of the package.
"""

from typing import Union

import numpy as np
import torch
from PIL import Image

__all__ = ["crop_and_resize", "framed_boxes"]


def framed_boxes(boxes: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """
    Args:
        boxes: K x 4 XYXY object boxes in pixels of a ``width x height`` image.

    Returns:
        K x 4 XYXY squares of side ``min(2 * longer side, width, height)``, centred on each box and
        shifted to lie inside the image.
    """
    boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = torch.clamp(torch.maximum(w, h) * 2.0, max=float(min(width, height)))
    x0 = (boxes[:, 0] + w / 2 - side / 2).clamp(min=0.0)
    y0 = (boxes[:, 1] + h / 2 - side / 2).clamp(min=0.0)
    x0 = torch.minimum(x0, width - side)
    y0 = torch.minimum(y0, height - side)
    return torch.stack([x0, y0, x0 + side, y0 + side], dim=1)


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
