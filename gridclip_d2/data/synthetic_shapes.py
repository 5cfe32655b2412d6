"""The synthetic world's objects: coloured shapes on muted backgrounds, drawn deterministically.

Both synthetic data sets draw from here: the detection set (:mod:`.synthetic`, boxes in LVIS format)
and the image-caption pairs that pretrain the small CLIP (:mod:`.synthetic_captions`). A category
is a colour and a shape, named in plain words ("red circle"), so captions and prompts can name it.

``render_objects(height, width, categories, rng, radius_range)`` returns an H x W x 3 uint8 RGB
image and the placed objects as ``(category index, [x, y, w, h])`` with boxes tight around the
drawn pixels. Randomness comes only from the ``numpy.random.RandomState`` passed in.
"""

from typing import List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..region_crops import crop_and_resize, framed_boxes
from ..vocabulary import SYNTHETIC_COLOURS, SYNTHETIC_NAMES, SYNTHETIC_SHAPES

__all__ = [
    "COLOURS",
    "SHAPES",
    "CATEGORY_NAMES",
    "category_index",
    "colour_and_shape",
    "framed_crop",
    "render_objects",
]

# The names are the built-in vocabulary "synthetic" (gridclip_d2.vocabulary: a model names its
# classes without this package); what they look like is drawn here.
# colour name -> RGB (saturated, far from the muted backgrounds and from each other)
_RGB = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 230),
    "yellow": (245, 215, 20),
    "purple": (140, 40, 200),
    "orange": (250, 130, 10),
    "pink": (255, 120, 200),
}
COLOURS = {c: _RGB[c] for c in SYNTHETIC_COLOURS}
SHAPES = SYNTHETIC_SHAPES
# "red circle", "red square", ... (gridclip_d2.vocabulary.builtin: the grid of six colours and
# four shapes, then the categories of the new concepts "pink" and "star")
CATEGORY_NAMES: Tuple[str, ...] = SYNTHETIC_NAMES


def colour_and_shape(k: int) -> Tuple[str, str]:
    """(colour, shape) of category index ``k``: the two words of its name."""
    colour, shape = CATEGORY_NAMES[k].split(" ")
    return colour, shape


_MAX_OVERLAP = 0.15  # intersection / smaller circumscribing square


def category_index(name: str) -> int:
    """Index of a category name ("blue cross") in ``CATEGORY_NAMES``."""
    try:
        return CATEGORY_NAMES.index(name)
    except ValueError:
        raise KeyError(
            f"Unknown synthetic category {name!r}; known: {list(CATEGORY_NAMES)}"
        ) from None


def _polygon(shape: str, cx: float, cy: float, r: float, rng) -> List[Tuple[float, float]]:
    """Vertices of a polygonal shape of circumradius ``r`` centred at (cx, cy), randomly turned."""
    if shape == "square":
        angles, radii = np.deg2rad(45 + 90 * np.arange(4) + rng.uniform(-15, 15)), [r] * 4
    elif shape == "triangle":
        angles, radii = np.deg2rad(-90 + 120 * np.arange(3) + rng.uniform(-20, 20)), [r] * 3
    elif shape == "star":  # five points, inner radius 0.45 r
        angles = np.deg2rad(-90 + 36 * np.arange(10) + rng.uniform(-20, 20))
        radii = [r if i % 2 == 0 else 0.45 * r for i in range(10)]
    elif shape == "cross":
        a = 0.3 * r  # half width of an arm
        s = r / np.sqrt(1 + 0.09)  # arm length so that the corners lie on the circumcircle
        pts = np.array(
            [
                (-a, -s),
                (a, -s),
                (a, -a),
                (s, -a),
                (s, a),
                (a, a),
                (a, s),
                (-a, s),
                (-a, a),
                (-s, a),
                (-s, -a),
                (-a, -a),
            ]
        )
        t = np.deg2rad(rng.uniform(-20, 20))
        rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        return [tuple(p) for p in pts @ rot.T + (cx, cy)]
    else:
        raise ValueError(f"Unknown synthetic shape '{shape}'")
    radii = np.asarray(radii)
    return list(zip(cx + radii * np.cos(angles), cy + radii * np.sin(angles)))


def _shape_mask(shape: str, cx: float, cy: float, r: float, width: int, height: int, rng):
    """H x W bool mask of one shape."""
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, rng), fill=255)
    return np.asarray(mask) > 0


def _muted_colour(rng) -> np.ndarray:
    return rng.uniform(70, 190) + rng.uniform(-25, 25, size=3)


def background(height: int, width: int, rng) -> np.ndarray:
    """H x W x 3 float background: gradient, smooth noise, stripes or checkers, in muted colours."""
    kind = rng.randint(4)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    c1, c2 = _muted_colour(rng), _muted_colour(rng)
    if kind == 0:  # linear gradient at a random angle
        t = rng.uniform(0, 2 * np.pi)
        proj = xs * np.cos(t) + ys * np.sin(t)
        w = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
    elif kind == 1:  # smooth noise: a coarse random grid upsampled bicubically
        cell = rng.randint(max(4, min(height, width) // 16), max(5, min(height, width) // 5))
        coarse = rng.uniform(0, 255, size=(height // cell + 2, width // cell + 2)).astype(np.uint8)
        w = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC)) / 255.0
    elif kind == 2:  # stripes
        t, period = rng.uniform(0, np.pi), rng.uniform(8, 32)
        w = 0.5 + 0.5 * np.sin(2 * np.pi * (xs * np.cos(t) + ys * np.sin(t)) / period)
    else:  # checkers
        cell = rng.randint(8, 33)
        w = ((xs // cell + ys // cell) % 2).astype(np.float32)
    w = np.asarray(w, dtype=np.float32)[..., None]
    return c1 * (1 - w) + c2 * w


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return iw * ih / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def render_objects(
    height: int, width: int, categories: Sequence[int], rng, radius_range: Tuple[float, float]
):
    """Draw one object per entry of ``categories`` (indices into ``CATEGORY_NAMES``), circumradius
    drawn log-uniformly in ``radius_range`` px, overlapping little; an object that finds no room in
    50 tries is dropped. Returns HWC uint8 RGB and the placed objects as (index, [x, y, w, h])."""
    image = background(height, width, rng)
    placed, squares = [], []
    for k in categories:
        colour_name, shape = colour_and_shape(k)
        colour = COLOURS[colour_name]
        for _ in range(50):
            r = float(np.exp(rng.uniform(*np.log(radius_range))))
            r = min(r, (min(height, width) - 3) / 2)
            cx, cy = rng.uniform(r + 1, width - r - 1), rng.uniform(r + 1, height - r - 1)
            sq = np.array([cx - r, cy - r, cx + r, cy + r])
            if all(_overlap(sq, other) <= _MAX_OVERLAP for other in squares):
                break
        else:
            continue  # no room left in this image: the object is dropped
        mask = _shape_mask(shape, cx, cy, r, width, height, rng)
        fill = np.clip(np.asarray(colour) + rng.uniform(-20, 20, size=3), 0, 255)
        image[mask] = fill
        ys, xs = np.nonzero(mask)
        x0, y0 = int(xs.min()), int(ys.min())
        box = [float(x0), float(y0), float(xs.max() + 1 - x0), float(ys.max() + 1 - y0)]
        placed.append((k, box))
        squares.append(sq)
    image = image + rng.normal(0, rng.uniform(3, 9), size=image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), placed


def framed_crop(image: np.ndarray, box: Sequence[float], size: int) -> np.ndarray:
    """The crop of one object that the small CLIP sees (``region_crops.framed_boxes``: a square
    of twice the XYWH ``box``'s longer side, inside the H x W x 3 uint8 ``image``),
    resized to ``size x size``. Returns size x size x 3 uint8."""
    x, y, w, h = box
    height, width = image.shape[:2]
    square = framed_boxes(torch.tensor([[x, y, x + w, y + h]]), width, height)
    return crop_and_resize(image, square, size)[0].permute(1, 2, 0).numpy()
