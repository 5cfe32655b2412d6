"""The project's one image reader: every image file read and every PIL image taken goes through it
(the data mapper, the predictor, the demo, the web page).

For 8-bit images it is Detectron2's ``detectron2.data.detection_utils.read_image``: the same
functions (``_apply_exif_orientation``, ``convert_PIL_to_numpy``), the same output (EXIF
orientation applied, HWC uint8 in "BGR", "RGB", or any format Detectron2 takes).

What Detectron2 gets wrong, and this reader does not: high-bit-depth images. PIL's
``convert("RGB")`` clips a 16-bit grayscale image (mode ``I;16``) to 255, so Detectron2 reads it as
an all-white image. Here the modes in :data:`HIGH_BIT_DEPTH_MODES` are scaled to 8 bits by the value
range of the mode, then made grey RGB:

* 16-bit (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``): value * 255 / 65535, rounded;
* 32-bit integer (``I``) or float (``F``): by the image's own maximum (value * 255 / max, negative
  and non-finite values as 0), with a warning naming the image: these modes have no fixed range.

A missing file raises ``FileNotFoundError``, an unreadable one :class:`UnreadableImageError` (an
``OSError`` and a ``ValueError``); both name the path.
"""

import logging
import os
from typing import Optional, Union

import numpy as np
from PIL import Image

from detectron2.data.detection_utils import _apply_exif_orientation, convert_PIL_to_numpy
from detectron2.utils.file_io import PathManager

__all__ = [
    "HIGH_BIT_DEPTH_MODES",
    "UnreadableImageError",
    "image_to_array",
    "read_image",
    "to_8_bit",
]

logger = logging.getLogger(__name__)

#: PIL modes of more than 8 bits per pixel, which PIL's ``convert`` clips instead of scaling
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
HIGH_BIT_DEPTH_MODES = SIXTEEN_BIT_MODES + ("I", "F")


class UnreadableImageError(OSError, ValueError):
    """An image file that exists but cannot be decoded (corrupt, truncated, not an image). An
    ``OSError`` as PIL's own errors are, and a ``ValueError`` (bad input) for callers that treat
    bad input so."""


def to_8_bit(image: Image.Image, name: str = "a PIL image") -> Image.Image:
    """``image`` as an 8-bit grey (mode "L") PIL image when its mode is in
    :data:`HIGH_BIT_DEPTH_MODES` (see the module doc for the scaling; ``name`` is the image in the
    warning); any other image is returned as it is."""
    mode = image.mode
    if mode not in HIGH_BIT_DEPTH_MODES:
        return image
    values = np.asarray(image).astype(np.float64)
    if mode in SIXTEEN_BIT_MODES:
        scale = 255.0 / 65535.0
    else:
        values[~np.isfinite(values)] = 0.0
        np.maximum(values, 0.0, out=values)
        peak = float(values.max()) if values.size else 0.0
        scale = 255.0 / peak if peak > 0 else 0.0
        logger.warning(
            "%s: a %s image (%s) has no fixed value range: rescaled to 8 bits by its maximum "
            "(%g -> 255)",
            name,
            "32-bit integer" if mode == "I" else "floating-point",
            mode,
            peak,
        )
    grey = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(grey)  # 2-D uint8: mode "L"


def image_to_array(
    image: Image.Image, format: Optional[str] = "BGR", name: str = "a PIL image"
) -> np.ndarray:
    """A PIL ``image`` as Detectron2's ``convert_PIL_to_numpy(image, format)`` makes it (HWC uint8
    for "BGR" / "RGB"), high-bit-depth modes scaled to 8 bits first (:func:`to_8_bit`). No EXIF
    orientation is applied: a PIL image is taken as the caller holds it (as Detectron2 does)."""
    return convert_PIL_to_numpy(to_8_bit(image, name), format)


def read_image(path: Union[str, os.PathLike], format: Optional[str] = "BGR") -> np.ndarray:
    """The image file ``path`` in ``format``: Detectron2's ``read_image`` (EXIF orientation
    applied, then ``convert_PIL_to_numpy``), with high-bit-depth images scaled to 8 bits instead of
    clipped (module doc). Raises FileNotFoundError for a missing file and
    :class:`UnreadableImageError` for one that cannot be decoded, both naming ``path``."""
    path = os.fspath(path)
    if not path:
        raise FileNotFoundError("image file not found: the path is empty")
    try:
        with PathManager.open(path, "rb") as f:
            image = Image.open(f)
            image.load()  # decoded here: a corrupt or truncated file fails inside the try
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except Exception as e:
        raise UnreadableImageError(f"cannot read image file {path}: {type(e).__name__}: {e}") from e
    # Detectron2's work-around of https://github.com/python-pillow/Pillow/issues/3973
    image = _apply_exif_orientation(image)
    return image_to_array(image, format, name=path)
