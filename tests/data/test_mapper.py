"""Alignment crops geometry and GridCLIPDatasetMapper: fields, transforms, formats, bad input."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from gridclip_d2.data.alignment_crops import crop_and_resize, crop_boxes, num_regions
from gridclip_d2.data.mapper import GridCLIPDatasetMapper

H, W = 40, 60
# Quadrant colours (RGB) of the test image: top-left, top-right, bottom-left, bottom-right.
COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], dtype=np.uint8)


def _quadrant_image():
    img = np.zeros((H, W, 3), dtype=np.uint8)
    img[: H // 2, : W // 2] = COLOURS[0]
    img[: H // 2, W // 2 :] = COLOURS[1]
    img[H // 2 :, : W // 2] = COLOURS[2]
    img[H // 2 :, W // 2 :] = COLOURS[3]
    return img


@pytest.fixture
def image_file(tmp_path):
    path = str(tmp_path / "quadrants.png")
    Image.fromarray(_quadrant_image()).save(path)
    return path


def _dataset_dict(file_name, annotations=None):
    if annotations is None:
        annotations = [{"bbox": [5, 5, 20, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}]
    return {
        "file_name": file_name,
        "image_id": 7,
        "height": H,
        "width": W,
        "annotations": annotations,
    }


def _mapper(image_format="RGB", flip_prob=1.0, **kwargs):
    augs = [T.ResizeShortestEdge(80, 1000), T.RandomFlip(prob=flip_prob, horizontal=True)]
    kwargs.setdefault("image_align", True)
    kwargs.setdefault("align_grids", (1, 2))
    kwargs.setdefault("teacher_input_size", 16)
    return GridCLIPDatasetMapper(True, augmentations=augs, image_format=image_format, **kwargs)


# ------------------------------------------------------------------------------------ crops
def test_crop_boxes_geometry():
    boxes = crop_boxes([1, 2], 100, 60)
    expected = torch.tensor(
        [
            [0, 0, 100, 60],
            [0, 0, 50, 30],
            [50, 0, 100, 30],
            [0, 30, 50, 60],
            [50, 30, 100, 60],
        ],
        dtype=torch.float32,
    )
    assert boxes.dtype == torch.float32
    assert torch.equal(boxes, expected)
    three = crop_boxes([3], 90, 30)  # row-major: left to right, then down
    assert torch.allclose(
        three[:4],
        torch.tensor(
            [[0, 0, 30, 10], [30, 0, 60, 10], [60, 0, 90, 10], [0, 10, 30, 20]], dtype=torch.float32
        ),
    )
    assert torch.allclose(three[-1], torch.tensor([60.0, 20.0, 90.0, 30.0]))
    assert crop_boxes([1, 2, 3], 7, 5).shape == (num_regions([1, 2, 3]), 4) == (14, 4)
    third = crop_boxes([3], 100, 100)[4]  # non-integer cell edges stay exact floats
    assert torch.allclose(third, torch.tensor([100 / 3, 100 / 3, 200 / 3, 200 / 3]))


@pytest.mark.parametrize("grids", [[], [0], [2.5], [-1]])
def test_crop_boxes_rejects_bad_grids(grids):
    with pytest.raises(ValueError, match="IMAGE_ALIGN.GRIDS"):
        crop_boxes(grids, 10, 10)


def test_crop_and_resize_content():
    img = _quadrant_image()
    boxes = crop_boxes([1, 2], W, H)
    crops = crop_and_resize(img, boxes, 8)
    assert crops.shape == (5, 3, 8, 8) and crops.dtype == torch.uint8
    for k in range(4):  # each 2x2 cell is one uniform colour
        assert (crops[1 + k] == torch.from_numpy(COLOURS[k]).view(3, 1, 1)).all(), k
    # a square image at its own size is the image itself
    square = np.ascontiguousarray(img[:, :40])
    full = crop_and_resize(square, torch.tensor([[0.0, 0, 40, 40]]), 40)
    assert torch.equal(full[0], torch.from_numpy(square).permute(2, 0, 1))
    # fractional box, sub-pixel exact: pixel i of the ramp holds 10 * i at x = i + 0.5; the three
    # output columns of x in [1.5, 3.2] sample x = 1.783, 2.35, 2.917 -> 12.8, 18.5, 24.2
    ramp = np.tile(np.arange(8, dtype=np.uint8)[None, :, None] * 10, (2, 1, 3))  # 2 x 8 x 3
    crop = crop_and_resize(ramp, torch.tensor([[1.5, 0.0, 3.2, 2.0]]), 3)
    assert np.allclose(crop[0, 0, 0].numpy(), [12.8, 18.5, 24.2], atol=1.0)
    # boxes are clipped to the image; a box with nothing inside it is an error
    clipped = crop_and_resize(img, torch.tensor([[-10.0, -10.0, W / 2, H / 2]]), 4)
    assert (clipped[0] == torch.from_numpy(COLOURS[0]).view(3, 1, 1)).all()
    with pytest.raises(ValueError, match="empty"):
        crop_and_resize(img, torch.tensor([[W + 1.0, 0, W + 5.0, 5]]), 4)


def test_crop_and_resize_is_deterministic_and_checks_input():
    rng = np.random.RandomState(0)
    img = rng.randint(0, 256, (37, 53, 3)).astype(np.uint8)
    boxes = crop_boxes([1, 2, 3], 53, 37)
    assert torch.equal(crop_and_resize(img, boxes, 24), crop_and_resize(img, boxes.numpy(), 24))
    with pytest.raises(ValueError, match="uint8"):
        crop_and_resize(img.astype(np.float32), boxes, 24)
    with pytest.raises(ValueError, match="H x W x 3"):
        crop_and_resize(img[:, :, 0], boxes, 24)


# ------------------------------------------------------------------------------------ mapper
def test_flip_and_resize_move_align_boxes_with_the_pixels(image_file):
    out = _mapper()(_dataset_dict(image_file))
    image = out["image"]  # 3 x 80 x 120, flipped and resized x2
    assert image.shape == (3, 80, 120)
    expected = torch.tensor(
        [
            [0, 0, 120, 80],
            [60, 0, 120, 40],
            [0, 0, 60, 40],  # top-left cell is now top-right, ...
            [60, 40, 120, 80],
            [0, 40, 60, 80],
        ],
        dtype=torch.float32,
    )
    assert torch.allclose(out["align_boxes"], expected)
    # the pixels inside each moved box are the pixels of that region of the original image
    teacher = out["teacher_images"]
    assert teacher.shape == (5, 3, 16, 16) and teacher.dtype == torch.uint8
    for k in range(1, 5):
        x0, y0, x1, y1 = out["align_boxes"][k].int().tolist()
        centre = image[:, (y0 + y1) // 2, (x0 + x1) // 2]
        assert torch.equal(centre, teacher[k, :, 8, 8]), k
        assert torch.equal(centre, torch.from_numpy(COLOURS[k - 1])), k
    # instances follow the same flip: XYWH (5, 5, 20, 10) -> x2 -> mirrored in width 120
    assert torch.allclose(out["instances"].gt_boxes.tensor, torch.tensor([[70.0, 10, 110, 30]]))


@pytest.mark.parametrize("image_format", ["RGB", "BGR"])
def test_teacher_images_are_rgb_whatever_the_input_format(image_file, image_format):
    out = _mapper(image_format=image_format, flip_prob=0.0)(_dataset_dict(image_file))
    expected = crop_and_resize(_quadrant_image(), crop_boxes([1, 2], W, H), 16)
    assert torch.equal(out["teacher_images"], expected)
    top_left = out["image"][:, 2, 2]
    rgb = torch.from_numpy(COLOURS[0])
    assert torch.equal(top_left, rgb if image_format == "RGB" else rgb.flip(0))


def test_mapper_from_config(gridclip_cfg, image_file, tmp_path):
    cfg = gridclip_cfg(ARCH="RNtiny", WEIGHTS="")
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 200
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.FORMAT = "RGB"
    cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.GRIDS = [1, 2, 3]
    train = GridCLIPDatasetMapper(cfg, True)
    assert train.teacher_input_size == 224  # RNtiny's image_resolution (TEACHER_INPUT_SIZE 0)
    out = train(_dataset_dict(image_file))
    assert out["image"].shape == (3, 64, 96)
    assert out["align_boxes"].shape == (14, 4) and out["align_boxes"].dtype == torch.float32
    assert out["teacher_images"].shape == (14, 3, 224, 224)
    assert len(out["instances"]) == 1 and out["image_id"] == 7
    assert (out["align_boxes"][:, 2:] <= torch.tensor([96.0, 64.0]) + 1e-4).all()

    test = GridCLIPDatasetMapper(cfg, False)
    out = test(_dataset_dict(image_file))
    assert "align_boxes" not in out and "teacher_images" not in out and "instances" not in out

    cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.TEACHER_INPUT_SIZE = 32
    out = GridCLIPDatasetMapper(cfg, True)(_dataset_dict(image_file))
    assert out["teacher_images"].shape[-1] == 32

    # a cache file in use: no teacher_images, align_boxes still there
    cache_file = tmp_path / "cache.pt"
    cache_file.write_bytes(b"x")
    cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.CACHE_FILE = str(cache_file)
    out = GridCLIPDatasetMapper(cfg, True)(_dataset_dict(image_file))
    assert "teacher_images" not in out and out["align_boxes"].shape == (14, 4)

    cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.ENABLED = False
    out = GridCLIPDatasetMapper(cfg, True)(_dataset_dict(image_file))
    assert "align_boxes" not in out and "teacher_images" not in out

    # proposal regions: the model makes them from its own predictions; the mapper gives none
    cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.ENABLED = True
    cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.REGIONS = "proposals"
    out = GridCLIPDatasetMapper(cfg, True)(_dataset_dict(image_file))
    assert "align_boxes" not in out and "teacher_images" not in out and len(out["instances"]) == 1
    cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.REGIONS = "grids"

    cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.ENABLED = True
    cfg.INPUT.CROP.ENABLED = True
    with pytest.raises(ValueError, match="INPUT.CROP.ENABLED"):
        GridCLIPDatasetMapper(cfg, True)


def test_bad_boxes_are_clipped_or_dropped_with_a_warning(image_file, caplog):
    annotations = [
        {"bbox": [5, 5, 20, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0},  # fine
        {"bbox": [10, 10, 0, 5], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1},  # zero width
        {"bbox": [100, 100, 10, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 2},  # outside
        {"bbox": [50, 30, 30, 30], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 3},  # overhangs
    ]
    with caplog.at_level(logging.WARNING, logger="gridclip_d2.data.mapper"):
        out = _mapper(flip_prob=0.0)(_dataset_dict(image_file, annotations))
    inst = out["instances"]
    assert inst.gt_classes.tolist() == [0, 3]
    assert torch.allclose(inst.gt_boxes.tensor[1], torch.tensor([100.0, 60, 120, 80]))  # clipped
    assert any(
        image_file in r.getMessage() and "dropped 2 of 4" in r.getMessage() for r in caplog.records
    )


def test_image_without_instances_still_gets_alignment_fields(image_file):
    out = _mapper()(_dataset_dict(image_file, annotations=[]))
    assert len(out["instances"]) == 0
    assert out["align_boxes"].shape == (5, 4) and out["teacher_images"].shape[0] == 5


def test_missing_and_corrupt_image_files_are_named(tmp_path, caplog):
    """At test time a bad image is an error naming it; in training it is skipped with a warning
    naming it (Detectron2's MapDataset then takes another sample)."""
    test_mapper = GridCLIPDatasetMapper(
        False, augmentations=[T.ResizeShortestEdge(80, 1000)], image_format="RGB"
    )
    missing = str(tmp_path / "nope.jpg")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 definitely not a jpeg")
    truncated = tmp_path / "truncated.png"
    Image.fromarray(_quadrant_image()).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        test_mapper(_dataset_dict(missing))
    with pytest.raises(OSError, match="corrupt.jpg"):
        test_mapper(_dataset_dict(str(corrupt)))
    with pytest.raises(OSError, match="truncated.png"):
        test_mapper(_dataset_dict(str(truncated)))

    train_mapper = _mapper()
    with caplog.at_level(logging.WARNING, logger="gridclip_d2"):
        for path in (missing, str(corrupt), str(truncated)):
            assert train_mapper(_dataset_dict(path)) is None
    assert train_mapper.num_skipped == 3
    for name in ("nope.jpg", "corrupt.jpg", "truncated.png"):
        assert name in caplog.text
