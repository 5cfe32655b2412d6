"""gridclip_d2.data.image_io, the project's one image reader: Detectron2's ``read_image`` for 8-bit
images (exactly), 16-bit and other high-bit-depth images scaled to 8 bits instead of clipped to
white (issue 20), and the same reading through the mapper, the predictor, the demo and the web page.
"""

import importlib.util
import logging
import os
import types

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image as detectron2_read_image
from detectron2.structures import BoxMode

from gridclip_d2.data.image_io import (
    UnreadableImageError,
    image_to_array,
    read_image,
)
from gridclip_d2.data.mapper import GridCLIPDatasetMapper

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "GridCLIP_synthetic.yaml")
H, W = 64, 96


def _gradient16() -> np.ndarray:
    """H x W uint16: a horizontal gradient over the whole 16-bit range, a vertical one on top."""
    x = np.linspace(0, 65535, W)[None, :]
    y = np.linspace(0, 1, H)[:, None]
    return np.rint(x * (0.5 + 0.5 * y)).astype(np.uint16)


def _write_pair(tmp_path, g16: np.ndarray, name: str = "gradient"):
    """(16-bit grey PNG, its 8-bit version as a grey PNG) of ``g16``."""
    path16, path8 = str(tmp_path / f"{name}16.png"), str(tmp_path / f"{name}8.png")
    Image.fromarray(g16).save(path16)
    Image.fromarray(np.rint(g16 / 257.0).astype(np.uint8)).save(path8)
    assert Image.open(path16).mode == "I;16" and Image.open(path8).mode == "L"
    return path16, path8


def _assert_close_and_not_white(image: np.ndarray, expected: np.ndarray):
    assert image.dtype == np.uint8 and image.shape == expected.shape
    assert np.abs(image.astype(int) - expected.astype(int)).max() <= 1
    assert (image < 250).mean() > 0.5  # not all white (Detectron2's reading of it)


# ----------------------------------------------------------------------------- the reader
def test_a_16_bit_grey_png_reads_as_its_8_bit_version(tmp_path):
    path16, path8 = _write_pair(tmp_path, _gradient16())
    # What issue 20 is about: Detectron2 clips the 16-bit values, nearly every pixel white.
    assert (detectron2_read_image(path16, format="RGB") == 255).mean() > 0.9
    for fmt in ("RGB", "BGR"):
        image = read_image(path16, format=fmt)
        assert image.shape == (H, W, 3)
        _assert_close_and_not_white(image, detectron2_read_image(path8, format=fmt))
        assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
    pil = Image.open(path16)
    _assert_close_and_not_white(image_to_array(pil, "RGB"), detectron2_read_image(path8, "RGB"))


def test_every_high_bit_depth_mode_is_scaled(caplog):
    g16 = _gradient16()
    expected = np.repeat(np.rint(g16 / 257.0).astype(np.uint8)[..., None], 3, axis=2)
    for mode, dtype in (("I;16", "<u2"), ("I;16L", "<u2"), ("I;16B", ">u2")):
        image = Image.frombytes(mode, (W, H), g16.astype(dtype).tobytes())
        with caplog.at_level(logging.WARNING, logger="gridclip_d2"):
            caplog.clear()
            _assert_close_and_not_white(image_to_array(image, "RGB"), expected)
        assert not caplog.records  # a fixed range: nothing to warn about
    # 32-bit integer and float: no fixed range, scaled by the image's maximum, with a warning.
    for image in (
        Image.fromarray(g16.astype(np.int32) * 7),
        Image.fromarray(g16.astype(np.float32) / 65535 * 3.5),
    ):
        assert image.mode in ("I", "F")
        with caplog.at_level(logging.WARNING, logger="gridclip_d2"):
            caplog.clear()
            _assert_close_and_not_white(image_to_array(image, "BGR", name="x.tif"), expected)
        assert any(
            "x.tif" in r.getMessage() and "rescaled" in r.getMessage() for r in caplog.records
        )


def test_8_bit_images_read_exactly_as_detectron2_reads_them(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    files = []
    for name, image in [
        ("rgb.png", Image.fromarray(rgb)),
        ("rgba.png", Image.fromarray(np.dstack([rgb, rgb[..., :1]]))),
        ("grey.png", Image.fromarray(rgb[..., 0])),
        ("palette.png", Image.fromarray(rgb).convert("P")),
        ("photo.jpg", Image.fromarray(rgb)),
    ]:
        image.save(tmp_path / name)
        files.append(str(tmp_path / name))
    for orientation in (3, 6, 8):  # EXIF orientation: rotated by both readers
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = str(tmp_path / f"exif{orientation}.jpg")
        Image.fromarray(rgb).save(path, exif=exif)
        files.append(path)
    assert detectron2_read_image(files[-1], "RGB").shape == (W, H, 3)  # the EXIF case rotates
    for path in files:
        for fmt in ("RGB", "BGR", "L"):
            expected = detectron2_read_image(path, format=fmt)
            image = read_image(path, format=fmt)
            assert image.dtype == expected.dtype and np.array_equal(image, expected), (path, fmt)


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        read_image(str(tmp_path / "nowhere.png"))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 not a jpeg")
    truncated = tmp_path / "truncated.png"
    Image.fromarray(_gradient16()).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:80])
    for path in (corrupt, truncated):
        with pytest.raises(UnreadableImageError, match=path.name) as e:
            read_image(path, "RGB")
        assert isinstance(e.value, OSError) and isinstance(e.value, ValueError)


# ------------------------------------------------------------------------------ the mapper
def test_the_mapper_reads_a_16_bit_png_in_a_training_record(tmp_path):
    path16, path8 = _write_pair(tmp_path, _gradient16())
    annotations = [{"bbox": [5, 5, 20, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}]
    for image_format in ("RGB", "BGR"):
        mapper = GridCLIPDatasetMapper(
            True,
            augmentations=[T.ResizeShortestEdge(H, 1000)],
            image_format=image_format,
            image_align=True,
            align_grids=(1, 2),
            teacher_input_size=16,
        )
        out16, out8 = (
            mapper(
                {"file_name": p, "image_id": 1, "height": H, "width": W, "annotations": annotations}
            )
            for p in (path16, path8)
        )
        assert mapper.num_skipped == 0
        _assert_close_and_not_white(
            out16["image"].permute(1, 2, 0).numpy(), out8["image"].permute(1, 2, 0).numpy()
        )
        assert (out16["teacher_images"].int() - out8["teacher_images"].int()).abs().max() <= 1
        assert torch.equal(out16["instances"].gt_boxes.tensor, out8["instances"].gt_boxes.tensor)


# -------------------------------------------------------------- the predictor and the demos
@pytest.fixture(scope="module")
def predictor(synthetic_weights):
    from gridclip_d2 import GridCLIPPredictor

    return GridCLIPPredictor.from_config_file(
        CONFIG, weights=synthetic_weights, vocabulary=["kite", "zebra"], score_thresh=0.0
    )


def _same(a, b):
    assert len(a) == len(b)
    assert torch.allclose(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=1e-3)
    assert torch.allclose(a.scores, b.scores, atol=1e-5)
    assert torch.equal(a.pred_classes, b.pred_classes)


def test_the_predictor_reads_a_16_bit_png_from_a_path_and_as_a_pil_image(predictor, tmp_path):
    path16, path8 = _write_pair(tmp_path, _gradient16())
    expected = predictor.as_model_array(path8)
    for image in (path16, Image.open(path16)):
        _assert_close_and_not_white(predictor.as_model_array(image), expected)
    # Values that are exact multiples of 257 scale exactly: the same detections as the 8-bit file.
    exact16, exact8 = _write_pair(tmp_path, (_gradient16() // 257) * 257, name="exact")
    assert np.array_equal(predictor.as_model_array(exact16), predictor.as_model_array(exact8))
    from_8_bit = predictor(exact8)
    _same(predictor(exact16), from_8_bit)
    _same(predictor(Image.open(exact16)), from_8_bit)


def _load(name, file):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "demo", file))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_demo_and_the_web_page_read_a_16_bit_png(predictor, tmp_path):
    path16, path8 = _write_pair(tmp_path, _gradient16())
    demo = _load("gridclip_demo_image_io", "demo.py")
    seen = []

    class Drawing:  # demo/predictor.py's VisualizationDemo, as far as run_images uses it
        def run_on_image(self, image):
            seen.append(image)
            return [], types.SimpleNamespace(save=lambda path: None)

    demo.run_images(Drawing(), [path16], [str(tmp_path / "gradient16_drawn.png")])
    (bgr,) = seen
    _assert_close_and_not_white(bgr, detectron2_read_image(path8, format="BGR"))

    app = _load("gridclip_app_image_io", "app.py")
    page = app.DetectionPage(predictor)
    blocks = app.build_page(page)
    (upload,) = [b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "image"]
    from gradio.components.image import ImageData

    received = upload.preprocess(ImageData(path=path16, orig_name="gradient16.png"))
    assert isinstance(received, Image.Image) and received.mode == "I;16"  # not clipped to RGB
    drawn16, rows16, message = page.detect(received, "kite, zebra", 0.0)
    assert "detection(s)" in message, message
    drawn8, rows8, _ = page.detect(np.asarray(Image.open(path8).convert("RGB")), "kite, zebra", 0.0)
    assert drawn16.shape == drawn8.shape == (H, W, 3) and (drawn16 < 250).mean() > 0.3
    assert len(rows16) == len(rows8)
