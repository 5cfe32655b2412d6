"""tools/export_model.py: TorchScript and ONNX with a baked vocabulary, equal to eager inference,
loadable with plain torch.jit.load, and never leaving a wrong or half-written file."""

import hashlib
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from matplotlib import cbook

from detectron2.structures import Boxes, pairwise_iou

from gridclip_d2 import GridCLIPPredictor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "GridCLIP_synthetic.yaml")
PHOTO = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
VOCABULARY = "person,necktie,flag"
spec = importlib.util.spec_from_file_location(
    "export_model", os.path.join(REPO, "tools", "export_model.py")
)
export_model = importlib.util.module_from_spec(spec)
spec.loader.exec_module(export_model)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, synthetic_weights):
    root = tmp_path_factory.mktemp("export")
    weights = synthetic_weights
    args = [
        "--config-file",
        CONFIG,
        "--vocabulary",
        VOCABULARY,
        "--sample-image",
        PHOTO,
        "--score-thresh",
        "0.1",
        "--opts",
        "MODEL.WEIGHTS",
        weights,
    ]
    written = export_model.main(args[:6] + ["--output", str(root / "out")] + args[6:])
    assert sorted(written) == ["onnx", "torchscript"]
    return root / "out", weights, args


def test_exports_match_eager_inference(exported):
    out, weights, _ = exported
    assert sorted(os.listdir(out)) == [
        "model.json",
        "model.onnx",
        "model.ts",
    ]  # nothing temporary left
    meta = json.loads((out / "model.json").read_text())
    assert meta["class_names"] == VOCABULARY.split(",")
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "model.ts").stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would make it
    predictor = GridCLIPPredictor.from_config_file(
        CONFIG, weights=weights, vocabulary=VOCABULARY, score_thresh=0.1
    )
    expected = predictor(PHOTO)  # the Python API on the photograph (512 x 600)
    assert len(expected) > 1
    resized = predictor._inputs(predictor.as_model_array(PHOTO, "BGR"))["image"]  # the traced size
    np.save(out.parent / "resized.npy", resized.numpy())
    with torch.no_grad():
        expected_resized = export_model.DisplayDetector(predictor)(resized)
    # Plain PyTorch, in a fresh process that imports neither Detectron2 nor this project.
    script = (
        "import sys, json, torch, torchvision, numpy as np\n"
        "from PIL import Image\n"
        "extra = {'model.json': ''}\n"
        f"model = torch.jit.load({str(out / 'model.ts')!r}, _extra_files=extra)\n"
        f"photo = torch.from_numpy(np.asarray(Image.open({PHOTO!r}).convert('RGB')))"
        ".permute(2, 0, 1).contiguous()\n"
        f"resized = torch.from_numpy(np.load({str(out.parent / 'resized.npy')!r}))\n"
        "with torch.no_grad():\n"
        "    results = [[t.tolist() for t in model(image)] for image in (photo, resized)]\n"
        "assert not [m for m in sys.modules "
        "if m.startswith(('detectron2', 'gridclip_d2', 'clip'))]\n"
        "print(json.dumps({'names': json.loads(extra['model.json'])['class_names'], "
        "'results': results}))\n"
    )
    result = json.loads(
        subprocess.run(
            [sys.executable, "-c", script], check=True, capture_output=True, text=True, cwd=str(out)
        ).stdout.splitlines()[-1]
    )
    assert result["names"] == VOCABULARY.split(",")
    (photo_boxes, photo_scores, photo_classes), (boxes, scores, classes) = result["results"]
    # At the traced size: eager inference's detections, exactly.
    assert np.allclose(boxes, expected_resized[0].numpy(), atol=1e-3)
    assert (
        np.allclose(scores, expected_resized[1].numpy(), atol=1e-5)
        and classes == expected_resized[2].tolist()
    )
    # Any other size is scaled inside the TorchScript (not by PIL as the predictor does), and the
    # boxes come back in the photograph's pixels: most of the predictor's top detections are there.
    photo_boxes = Boxes(torch.tensor(photo_boxes).reshape(-1, 4))
    assert (photo_boxes.tensor[:, 2] <= 512).all() and (photo_boxes.tensor[:, 3] <= 600).all()
    top = expected[:10]
    same = (pairwise_iou(top.pred_boxes, photo_boxes) > 0.5) & (
        top.pred_classes[:, None] == torch.tensor(photo_classes)[None]
    )
    assert same.any(dim=1).float().mean() >= 0.7, same.any(dim=1)


def test_onnx_runs_at_the_traced_size(exported):
    import onnxruntime

    out, weights, _ = exported
    meta = json.loads((out / "model.json").read_text())
    height, width = meta["input"]["height"], meta["input"]["width"]
    predictor = GridCLIPPredictor.from_config_file(
        CONFIG, weights=weights, vocabulary=VOCABULARY, score_thresh=0.1
    )
    image = predictor._inputs(predictor.as_model_array(PHOTO, "BGR"))["image"]
    assert tuple(image.shape) == (3, height, width)
    session = onnxruntime.InferenceSession(
        str(out / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    boxes, scores, classes = session.run(["boxes", "scores", "classes"], {"image": image.numpy()})
    with torch.no_grad():
        expected = export_model.DisplayDetector(predictor)(image)
    assert len(scores) == len(expected[1]) > 1
    assert np.allclose(boxes, expected[0].numpy(), atol=1e-3) and np.array_equal(
        classes, expected[2].numpy()
    )
    with pytest.raises(Exception, match="(?i)dimension"):
        session.run(None, {"image": np.zeros((3, height + 32, width), np.uint8)})


def test_onnx_on_any_image_by_the_documented_letterbox(exported):
    """docs/usage.md's recipe (scale to fit, pad with model.json's pad_value, divide the boxes by
    the scale) on a photograph of another size: the detections of model.ts, which letterboxes
    inside, on the same photograph (PIL's and torch's resampling differ in the last grey level)."""
    import onnxruntime
    from PIL import Image

    out, _, _ = exported
    meta = json.loads((out / "model.json").read_text())["input"]
    image = Image.open(PHOTO).convert("RGB")
    assert (image.height, image.width) != (meta["height"], meta["width"])
    scale = min(meta["height"] / image.height, meta["width"] / image.width)
    size = (round(image.width * scale), round(image.height * scale))
    canvas = np.full((meta["height"], meta["width"], 3), meta["pad_value"], np.uint8)
    canvas[: size[1], : size[0]] = np.asarray(image.resize(size, Image.BILINEAR))
    session = onnxruntime.InferenceSession(
        str(out / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    boxes, scores, classes = session.run(
        None, {"image": np.ascontiguousarray(canvas.transpose(2, 0, 1))}
    )
    boxes = boxes / scale
    with torch.no_grad():
        ts = torch.jit.load(str(out / "model.ts"))(
            torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()
        )
    top = slice(0, 10)
    same = (pairwise_iou(Boxes(ts[0][top]), Boxes(torch.from_numpy(boxes))) > 0.5) & (
        ts[2][top][:, None] == torch.from_numpy(classes)[None]
    )
    assert len(scores) > 1 and same.any(dim=1).float().mean() >= 0.7, same.any(dim=1)


def test_a_failed_check_keeps_the_previous_export(exported, tmp_path, monkeypatch):
    out, _, args = exported
    digest = hashlib.sha1((out / "model.ts").read_bytes()).hexdigest()
    run = export_model.run_torchscript
    monkeypatch.setattr(
        export_model,
        "run_torchscript",
        lambda path, image: tuple(t + 1 if t.is_floating_point() else t for t in run(path, image)),
    )
    with pytest.raises(RuntimeError, match="torchscript export: boxes differ from eager inference"):
        export_model.main(args[:6] + ["--output", str(out), "--format", "torchscript"] + args[6:])
    assert hashlib.sha1((out / "model.ts").read_bytes()).hexdigest() == digest
    assert sorted(os.listdir(out)) == ["model.json", "model.onnx", "model.ts"]
    with pytest.raises(SystemExit, match="--sample-image"):
        export_model.main(
            [
                "--config-file",
                CONFIG,
                "--sample-image",
                str(tmp_path / "none.jpg"),
                "--output",
                str(tmp_path),
            ]
        )


def test_an_interrupted_export_leaves_nothing_behind(exported, monkeypatch):
    """A failure inside the exporter itself (here an interrupt after a partial write) removes the
    staged file and leaves --output as it was."""
    out, _, args = exported
    before = {name: hashlib.sha1((out / name).read_bytes()).hexdigest() for name in os.listdir(out)}

    def partial_export(model, inputs, path, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half an ONNX file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.onnx, "export", partial_export)
    with pytest.raises(KeyboardInterrupt):
        export_model.main(args[:6] + ["--output", str(out), "--format", "onnx"] + args[6:])
    after = {name: hashlib.sha1((out / name).read_bytes()).hexdigest() for name in os.listdir(out)}
    assert after == before
