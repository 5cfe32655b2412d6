"""Classes given by example images (gridclip_d2.vocabulary.ImageExemplar) in the Python API: rows
from the model's own CLIP image encoder with the teacher's framing, mixed with text rows, averaged
per name, and bad exemplars named."""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib import cbook
from PIL import Image

from gridclip_d2 import GridCLIPPredictor
from gridclip_d2.config import teacher_input_size_from_cfg
from gridclip_d2.modeling.alignment import encode_teacher_images
from gridclip_d2.modeling.clip_resnet import build_clip_teacher
from gridclip_d2.region_crops import crop_and_resize, framed_boxes
from gridclip_d2.vocabulary import ImageExemplar, parse_query_image, split_vocabulary_entries

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "GridCLIP_synthetic.yaml")
PHOTO = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)  # 512 x 600 RGB photograph
FACE = (170.0, 90.0, 350.0, 330.0)
TIE = (220.0, 430.0, 300.0, 560.0)


@pytest.fixture(scope="module")
def predictor(synthetic_weights):
    return GridCLIPPredictor.from_config_file(CONFIG, weights=synthetic_weights, score_thresh=0.0)


def _independent_row(cfg, rgb, boxes):
    """What the image-level alignment's teacher embeds of these objects, computed without the
    predictor: framed squares, the teacher's size, the CLIP image encoder of MODEL.CLIP.WEIGHTS."""
    size = teacher_input_size_from_cfg(cfg)
    h, w = rgb.shape[:2]
    crops = crop_and_resize(rgb, framed_boxes(torch.tensor(boxes), w, h), size)
    embeddings = encode_teacher_images(build_clip_teacher(cfg).eval(), crops)
    return F.normalize(embeddings.mean(dim=0), dim=-1)


def test_mixed_vocabulary_rows_are_text_and_teacher_image_embeddings(predictor):
    rgb = np.asarray(Image.open(PHOTO).convert("RGB"))
    text_rows = predictor.model.encode_vocabulary(["person", "flag"])
    vocabulary = ["person", ImageExemplar("like her face", PHOTO, FACE), "flag"]
    predictor.set_vocabulary(vocabulary)
    assert predictor.vocabulary == ["person", "like her face", "flag"]
    rows = predictor.model.head.classifier.embeddings.cpu()
    torch.testing.assert_close(rows[[0, 2]], F.normalize(text_rows.float().cpu(), dim=-1))
    face = _independent_row(predictor.cfg, rgb, [FACE])
    torch.testing.assert_close(rows[1], face, atol=1e-5, rtol=1e-4)
    # the colour order matters to CLIP: the same crop as BGR is another embedding
    bgr_face = _independent_row(predictor.cfg, np.ascontiguousarray(rgb[:, :, ::-1]), [FACE])
    assert float(face @ bgr_face) < 0.9999
    instances = predictor(PHOTO)
    assert len(instances) > 0 and set(instances.pred_class_names) <= set(predictor.vocabulary)
    # every image kind gives the same row: a path, an RGB array, a PIL image
    for image in (rgb, Image.open(PHOTO)):
        predictor.set_vocabulary(["person", ImageExemplar("like her face", image, FACE), "flag"])
        torch.testing.assert_close(predictor.model.head.classifier.embeddings.cpu()[1], rows[1])


def test_several_exemplars_of_a_name_are_averaged_and_a_whole_image_is_one(predictor, tmp_path):
    rgb = np.asarray(Image.open(PHOTO).convert("RGB"))
    predictor.set_vocabulary(
        [ImageExemplar("hopper", PHOTO, FACE), "flag", ImageExemplar("hopper", PHOTO, TIE)]
    )
    assert predictor.vocabulary == ["hopper", "flag"]
    one = _independent_row(predictor.cfg, rgb, [FACE])
    other = _independent_row(predictor.cfg, rgb, [TIE])
    torch.testing.assert_close(
        predictor.model.head.classifier.embeddings.cpu()[0],
        F.normalize(one + other, dim=-1),
        atol=1e-5,
        rtol=1e-4,
    )
    # no box: the whole image, resized as it is (not framed)
    small = tmp_path / "small.png"
    Image.fromarray(rgb[:200, :300]).save(small)
    predictor.set_vocabulary([ImageExemplar("corner", str(small))])
    size = teacher_input_size_from_cfg(predictor.cfg)
    whole = crop_and_resize(rgb[:200, :300].copy(), torch.tensor([[0.0, 0.0, 300.0, 200.0]]), size)
    expected = encode_teacher_images(build_clip_teacher(predictor.cfg).eval(), whole)[0]
    torch.testing.assert_close(
        predictor.model.head.classifier.embeddings.cpu()[0], expected, atol=1e-5, rtol=1e-4
    )


def test_text_names_after_exemplars_are_text_again(predictor):
    text_row = F.normalize(predictor.model.encode_vocabulary(["kite"]).float().cpu(), dim=-1)
    predictor.set_vocabulary(["kite"])
    predictor.set_vocabulary([ImageExemplar("kite", PHOTO, TIE)])
    assert float(predictor.model.head.classifier.embeddings.cpu()[0] @ text_row[0]) < 0.999
    predictor.set_vocabulary(["kite"])  # the same name, now as text: the text row, not the image's
    torch.testing.assert_close(predictor.model.head.classifier.embeddings.cpu(), text_row)


def test_a_vocabulary_with_exemplars_at_construction(synthetic_weights):
    predictor = GridCLIPPredictor.from_config_file(
        CONFIG,
        weights=synthetic_weights,
        vocabulary=["person", ImageExemplar("tie like this", PHOTO, TIE)],
        score_thresh=0.0,
    )
    assert predictor.vocabulary == ["person", "tie like this"]
    assert set(predictor(PHOTO).pred_class_names) <= {"person", "tie like this"}


def test_bad_exemplars_are_named(predictor, tmp_path):
    predictor.set_vocabulary(["person"])
    broken = tmp_path / "notes.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"image exemplar cup=.*notes\.jpg"):
        predictor.set_vocabulary(["person", ImageExemplar("cup", str(broken))])
    with pytest.raises(FileNotFoundError, match=r"image exemplar cup=.*nowhere\.png"):
        predictor.set_vocabulary([ImageExemplar("cup", str(tmp_path / "nowhere.png"))])
    with pytest.raises(ValueError, match=r"cup=.*not inside the image \(512 x 600"):
        predictor.set_vocabulary([ImageExemplar("cup", PHOTO, (400, 10, 600, 90))])
    with pytest.raises(ValueError, match="empty"):
        ImageExemplar("cup", PHOTO, (10, 10, 10, 40))
    with pytest.raises(ValueError, match="'person' given both as text and as image"):
        predictor.set_vocabulary(["person", ImageExemplar("person", PHOTO, FACE)])
    with pytest.raises(TypeError, match="item 1 is a int"):
        predictor.set_vocabulary(["person", 3, ImageExemplar("cup", PHOTO, FACE)])
    assert predictor.vocabulary == ["person"]  # nothing changed by a failed call


def test_query_image_syntax():
    assert parse_query_image("pink star=a/b.jpg") == ImageExemplar("pink star", "a/b.jpg")
    assert parse_query_image(" cup = c:/x.png:1,2,30.5,40") == ImageExemplar(
        "cup", "c:/x.png", (1.0, 2.0, 30.5, 40.0)
    )
    assert parse_query_image("cup=dir:with:colons.png").image == "dir:with:colons.png"
    for bad, message in (
        ("cup", "expected NAME=PATH"),
        ("=x.png", "expected NAME=PATH"),
        ("cup=x.png:1,2,3,x", "four numbers"),
        ("cup=x.png:5,2,3,9", "empty"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_query_image(bad)
    order, text, exemplars = split_vocabulary_entries(
        ["a", ImageExemplar("b", "x"), " c ", ImageExemplar("b", "y")]
    )
    assert order == ["a", "b", "c"] and text == ["a", "c"] and len(exemplars["b"]) == 2
