#!/usr/bin/env python
"""Export a GridCLIP model with a fixed vocabulary baked in: TorchScript, and ONNX.

    python tools/export_model.py --config-file configs/GridCLIP_synthetic.yaml \
        --vocabulary "blue square,yellow circle,green cross" \
        --sample-image datasets/synthetic/val/100001.jpg --output exported/ \
        --opts MODEL.WEIGHTS output/GridCLIP_synthetic/model_final.pth

Writes ``model.ts`` (``torch.jit.load`` runs it with no Detectron2, no CLIP and no project code;
``import torchvision`` first, for its NMS op) and
``model.onnx`` (``--format onnx`` or ``both``), plus ``model.json``: the class names, input size and
format. The vocabulary's text embeddings become constants of the exported graph, so the classes are
fixed at export; export again for another vocabulary.

Both take one image as a ``3 x H x W`` uint8 tensor in INPUT.FORMAT (RGB for the shipped configs)
and return ``boxes`` (N x 4, XYXY in that image's pixels), ``scores`` (N) and ``classes`` (N,
indices into the class names): the detections a person looks at (MODEL.GRIDCLIP.DISPLAY, as
``GridCLIPPredictor`` returns them). The graph is traced at the sample image's size after the test
resize (INPUT.MIN/MAX_SIZE_TEST; in ``model.json``). ``model.ts`` takes any image size: it scales
the image to fit that size (aspect kept, padded) and maps the boxes back. ``model.onnx`` takes
exactly that size (ONNX Runtime refuses others); resize and pad before, as ``model.json`` says.

After export, each file is run on the sample image and its boxes, scores and classes are compared
with eager inference (``--atol``); a mismatch (or any other failure) is an error and changes nothing
already there: files are written to temporary names, renamed only once every one passes, and
removed otherwise.

Detectron2's ``TracingAdapter`` flattens the model's inputs and outputs for ``torch.jit.trace``;
ONNX uses PyTorch's TorchScript-based exporter (``dynamo=False``, opset 17).
"""

import gridclip_d2.library_warnings  # noqa: F401  (first: quiets the libraries' warnings)

import argparse
import json
import logging
import os
import sys
import tempfile
import warnings
from typing import Dict, List, Tuple

import numpy as np
import torch

from detectron2.export import TracingAdapter
from detectron2.utils.logger import setup_logger

from gridclip_d2 import GridCLIPPredictor
from gridclip_d2.atomic_write import atomic_write
from gridclip_d2.engine import setup_cfg

logger = logging.getLogger("gridclip_d2.export_model")

OUTPUT_NAMES = ("boxes", "scores", "classes")


class DisplayDetector(torch.nn.Module):
    """One image (3 x H x W uint8, resized) -> (boxes, scores, classes) of what the predictor shows:
    the model's detections above the display threshold after the class-agnostic display NMS."""

    def __init__(self, predictor: GridCLIPPredictor):
        super().__init__()
        self.predictor = predictor
        self.model = predictor.model

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        height, width = image.shape[-2:]
        instances = self.model([{"image": image, "height": height, "width": width}])[0]["instances"]
        instances = self.predictor.display_filter(instances)
        return instances.pred_boxes.tensor, instances.scores, instances.pred_classes


class LetterboxDetector(torch.nn.Module):
    """What ``model.ts`` holds: any 3 x h x w uint8 image is scaled to fit the traced size (aspect
    kept, the rest padded with the pixel mean, i.e. 0 after normalisation as Detectron2 pads), run
    through the traced detector, and its boxes mapped back to the image's pixels. An image of
    exactly the traced size goes through untouched. Scripted around the traced graph: written here
    because the trace itself holds for one input size only."""

    def __init__(self, traced: torch.nn.Module, height: int, width: int, pixel_mean: List[float]):
        super().__init__()
        self.traced = traced
        self.height = height
        self.width = width
        self.register_buffer(
            "pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(3, 1, 1)
        )

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if image.dim() != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
            raise ValueError("model.ts takes one 3 x H x W uint8 image tensor (see model.json)")
        h, w = image.shape[1], image.shape[2]
        if h == self.height and w == self.width:
            return self.traced(image)
        scale = min(self.height / h, self.width / w)
        new_h = min(self.height, max(1, int(round(h * scale))))
        new_w = min(self.width, max(1, int(round(w * scale))))
        resized = torch.nn.functional.interpolate(
            image[None].float(),
            size=[new_h, new_w],
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )[0]
        canvas = self.pixel_mean.expand(3, self.height, self.width).clone()
        canvas[:, :new_h, :new_w] = resized
        boxes, scores, classes = self.traced(canvas.round().clamp(0, 255).to(torch.uint8))
        boxes = boxes / torch.tensor([new_w / w, new_h / h, new_w / w, new_h / h])
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        return boxes, scores, classes


def eager_outputs(predictor: GridCLIPPredictor, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return DisplayDetector(predictor)(image)


def compare(name: str, got, expected, atol: float) -> None:
    """Raise naming the export whose outputs differ from eager inference."""
    for key, a, b in zip(OUTPUT_NAMES, got, expected):
        a, b = torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b))
        if a.shape != b.shape:
            raise RuntimeError(
                f"{name}: {key} has shape {tuple(a.shape)}, eager inference {tuple(b.shape)}"
            )
        if key == "classes":
            ok = torch.equal(a.long(), b.long())
        else:
            ok = torch.allclose(a.float(), b.float(), atol=atol, rtol=0)
        if not ok:
            diff = (a.float() - b.float()).abs().max().item() if a.numel() else 0.0
            raise RuntimeError(
                f"{name}: {key} differ from eager inference (max difference {diff:.3g} > {atol})"
            )


def write_file(path: str, save) -> None:
    """``save(path)``, with an error naming ``path`` when it cannot be written (PyTorch's own says
    "[enforce fail at inline_container.cc] open file failed" and names no file)."""
    try:
        save(path)
    except (OSError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise OSError(
            f"--output: cannot write {path} ({type(e).__name__}: {first}). Choose a folder you can "
            "write to"
        ) from None


def check_writable(folder: str) -> None:
    """Exit naming ``folder`` (--output) when a file cannot be written there (or, while it does not
    exist, in the nearest folder above it): checked before the model loads and the slow trace."""
    probe = os.path.abspath(folder)
    while not os.path.isdir(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        where = folder if probe == os.path.abspath(folder) else f"{folder} (in {probe})"
        raise SystemExit(
            f"--output: cannot write to {where}: {e.strerror or e}. Choose a folder you can "
            "write to"
        ) from None


def export_torchscript(
    detector: DisplayDetector, image: torch.Tensor, path: str, meta: Dict
) -> None:
    adapter = TracingAdapter(detector, image)
    # Tracing warns at every Python-level shape decision; the comparison with eager inference
    # after export is the check that matters.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
    height, width = image.shape[-2:]
    mean = [float(v) for v in detector.model.pixel_mean.flatten()]
    traced = torch.jit.script(LetterboxDetector(traced, int(height), int(width), mean))
    write_file(
        path, lambda p: torch.jit.save(traced, p, _extra_files={"model.json": json.dumps(meta)})
    )


def export_onnx(detector: DisplayDetector, image: torch.Tensor, path: str, meta: Dict) -> None:
    import onnx

    adapter = TracingAdapter(detector, image)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # the TorchScript-based exporter is asked for
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            adapter,
            adapter.flattened_inputs,
            path,
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=list(OUTPUT_NAMES),
        )
    model = onnx.load(path)
    onnx.helper.set_model_props(model, {"model.json": json.dumps(meta)})
    write_file(path, lambda p: onnx.save(model, p))


def run_torchscript(path: str, image: torch.Tensor):
    with torch.no_grad():
        return torch.jit.load(path)(image)


def run_onnx(path: str, image: torch.Tensor):
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(list(OUTPUT_NAMES), {"image": image.numpy()})


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument(
        "--vocabulary",
        default="",
        help="comma-separated names, a .txt/.json names file or a text-embedding .npy "
        "(default: the model's vocabulary)",
    )
    parser.add_argument(
        "--sample-image",
        required=True,
        help="an image: traced at its resized size, and "
        "used to check the export against eager inference",
    )
    parser.add_argument(
        "--output", required=True, help="folder for model.ts / model.onnx / model.json"
    )
    parser.add_argument("--format", choices=["torchscript", "onnx", "both"], default="both")
    parser.add_argument(
        "--score-thresh",
        type=float,
        default=None,
        help="shown score threshold (default: MODEL.GRIDCLIP.DISPLAY.SCORE_THRESH)",
    )
    parser.add_argument(
        "--atol", type=float, default=1e-3, help="tolerance of the eager comparison"
    )
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config KEY VALUE pairs"
    )
    return parser


def main(argv=None) -> Dict[str, str]:
    args = get_parser().parse_args(argv)
    setup_logger(name="gridclip_d2")
    if not os.path.isfile(args.sample_image):
        raise SystemExit(f"--sample-image: no such file: {args.sample_image}")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise SystemExit(f"--output: {args.output} is a file; give a folder")
    check_writable(args.output)
    cfg = setup_cfg(args.config_file, args.opts + ["MODEL.DEVICE", "cpu"], mode="inference")
    predictor = GridCLIPPredictor(cfg, args.vocabulary or None, score_thresh=args.score_thresh)
    try:
        sample = predictor.as_model_array(args.sample_image)
    except ValueError as e:
        raise SystemExit(f"--sample-image: {e}") from None
    model_input = predictor._inputs(sample)["image"]
    detector = DisplayDetector(predictor).eval()
    height, width = model_input.shape[-2:]
    meta = {
        "class_names": predictor.vocabulary,
        "input": {
            "format": predictor.input_format,
            "height": int(height),
            "width": int(width),
            "dtype": "uint8",
            "layout": "3 x H x W",
            "note": "model.ts takes any H x W (scaled to fit this size, padded); "
            "model.onnx this size: scale an image to fit, pad the rest with pad_value",
            # the pixel mean, which Detectron2 pads with (0 after normalisation)
            "pad_value": [int(round(float(v))) for v in predictor.model.pixel_mean.flatten()],
        },
        "outputs": {
            "boxes": "N x 4 XYXY pixels of the input",
            "scores": "N",
            "classes": "N indices of class_names",
        },
        "score_thresh": predictor.score_thresh,
        "nms_thresh": predictor.nms_thresh,
        "config_file": args.config_file,
        "weights": cfg.MODEL.WEIGHTS,
    }
    os.makedirs(args.output, exist_ok=True)
    formats = ["torchscript", "onnx"] if args.format == "both" else [args.format]
    paths = {
        fmt: os.path.join(args.output, "model.ts" if fmt == "torchscript" else "model.onnx")
        for fmt in formats
    }
    # Every format is written to PATH.new, run and compared with eager inference; only when all
    # pass do they replace what --output holds. Any failure (or an interrupt) removes them.
    staged = {fmt: path + ".new" for fmt, path in paths.items()}
    try:
        # The display threshold is applied where the model decodes, as the predictor does.
        with predictor.decoding_for_display():
            expected = eager_outputs(predictor, model_input)
            for fmt in formats:
                export = export_torchscript if fmt == "torchscript" else export_onnx
                export(detector, model_input, staged[fmt], meta)
                got = (run_torchscript if fmt == "torchscript" else run_onnx)(
                    staged[fmt], model_input
                )
                compare(f"{fmt} export", got, expected, args.atol)
    except BaseException:
        for path in staged.values():
            if os.path.exists(path):
                os.remove(path)
        raise
    written = {}
    for fmt in formats:
        os.replace(staged[fmt], paths[fmt])
        written[fmt] = paths[fmt]
        logger.info(
            f"{paths[fmt]}: {len(expected[0])} detections on {args.sample_image}, "
            "equal to eager inference"
        )
    atomic_write(
        os.path.join(args.output, "model.json"), lambda f: json.dump(meta, f, indent=1), mode="w"
    )
    print(
        json.dumps(
            {"written": written, "classes": predictor.vocabulary, "input": meta["input"]}, indent=1
        )
    )
    return written


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
