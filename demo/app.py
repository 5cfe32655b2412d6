#!/usr/bin/env python
"""GridCLIP in a web page: upload an image (or pick an example), name any classes, see what is
found.

    python demo/app.py --config-file configs/GridCLIP_synthetic.yaml \
        --opts MODEL.WEIGHTS output/GridCLIP_synthetic/model_final.pth
    # then open http://127.0.0.1:7860

A local Gradio page (nothing is sent anywhere: Gradio's analytics are off and no share link is
made). The model is loaded once (:class:`gridclip_d2.GridCLIPPredictor`); the text embeddings of
the vocabularies used last are cached. The text box takes class names only (text naming a file is
refused: the page never reads a file on the server). The page shows the image with the detections
drawn by Detectron2's ``Visualizer`` and a table of them (class, score, box), one box and one label
per object (MODEL.GRIDCLIP.DISPLAY). A missing image, an unreadable upload, an empty vocabulary or a
file name in the text box is answered with a message on the page.
"""

import gridclip_d2.library_warnings  # noqa: F401  (first: quiets the libraries' warnings)

import argparse
import logging
import os
import sys
import threading
import time
from typing import List, Optional, Sequence, Tuple, Union

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is imported

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from detectron2.utils.logger import setup_logger  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for `predictor` next to this file
from predictor import draw_instances  # noqa: E402

from gridclip_d2 import GridCLIPPredictor  # noqa: E402
from gridclip_d2.vocabulary import builtin_vocabulary, parse_vocabulary  # noqa: E402

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "examples")
TABLE_HEADERS = ["class", "score", "x0", "y0", "x1", "y1"]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class UnreadableUpload(str):
    """What an image input made by :func:`tolerant_image` passes on for a file it cannot decode."""


def tolerant_image(**kwargs) -> gr.Image:
    """A ``gr.Image`` whose unreadable uploads reach the event handler as an
    :class:`UnreadableUpload` (shown as a message on the page) instead of failing inside Gradio with
    its internal error text. Written here: Gradio has no option for it. (The instance's
    ``preprocess`` is wrapped: a subclass of a Gradio component makes Gradio write a .pyi file
    beside this script.)"""
    image = gr.Image(**kwargs)
    preprocess = image.preprocess

    def tolerant(payload):
        try:
            return preprocess(payload)
        except Exception as e:
            return UnreadableUpload(type(e.__cause__ or e).__name__)

    image.preprocess = tolerant
    return image


def vocabulary_from_text(text: Optional[str]) -> List[str]:
    """The class names typed in the page's text box: ``parse_vocabulary`` with
    ``allow_files=False``, the rule of every entry point except that text naming a file (ending in
    .txt, .json or .npy) is refused: the page never reads a file on the server. Raises ValueError
    for that, an empty vocabulary or a name given twice."""
    return list(parse_vocabulary(text or "", allow_files=False).names)


class DetectionPage:
    """What the page does, apart from the page itself (so tests can call it directly)."""

    def __init__(self, predictor: GridCLIPPredictor):
        self.predictor = predictor
        self.training_classes = list(predictor.vocabulary)
        self.lock = threading.Lock()  # one model, one request at a time

    def detect(
        self, image: Union[None, np.ndarray, Image.Image], vocabulary: str, threshold: float
    ) -> Tuple[Optional[np.ndarray], List[list], str]:
        """(drawn RGB image, table rows, message) for ``image`` and comma-separated names.
        ``image``: the upload as a PIL image in its own mode (read by the project's image reader,
        :mod:`gridclip_d2.data.image_io`, through the predictor: a 16-bit image is scaled to 8
        bits), or an RGB array."""
        if image is None:
            return None, [], "Upload an image or pick an example first."
        if isinstance(image, UnreadableUpload):
            return (
                None,
                [],
                f"The uploaded file is not an image that can be read ({image}). "
                "Upload a JPEG or PNG.",
            )
        try:
            names = vocabulary_from_text(vocabulary)
        except ValueError as e:
            return (
                None,
                [],
                f'Vocabulary: {e}. Type class names separated by commas, e.g. "cat, dog".',
            )
        try:
            if isinstance(image, Image.Image):
                image = self.predictor.as_model_array(image)
            else:
                image = self.predictor.as_model_array(np.asarray(image), format="RGB")
        except ValueError as e:
            return None, [], f"Cannot use this image: {e}."
        model_format = self.predictor.input_format
        rgb = image if model_format == "RGB" else image[:, :, ::-1]
        start = time.time()
        with self.lock:
            self.predictor.set_vocabulary(names)
            self.predictor.score_thresh = float(threshold)
            instances = self.predictor(image, format=model_format)
        drawn = draw_instances(rgb, instances, names).get_image()
        rows = [
            [name, round(float(score), 3), *[round(float(v), 1) for v in box]]
            for name, score, box in zip(
                instances.pred_class_names, instances.scores, instances.pred_boxes.tensor
            )
        ]
        found = sorted(set(instances.pred_class_names))
        message = (
            f"{len(instances)} detection(s) at score >= {threshold:.2f} among {len(names)} "
            f"class(es) in {time.time() - start:.1f} s" + (f": {', '.join(found)}" if found else "")
        )
        return drawn, rows, message


def example_images(folder: str = EXAMPLES) -> List[str]:
    if not os.path.isdir(folder):
        return []
    return sorted(
        os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS)
    )


def build_page(
    page: DetectionPage, examples: Sequence[str] = (), lvis_names: Sequence[str] = ()
) -> gr.Blocks:
    training = ", ".join(page.training_classes)
    with gr.Blocks(title="GridCLIP open-vocabulary detection") as blocks:
        gr.Markdown(
            "# GridCLIP: open-vocabulary detection\n"
            "Upload an image or pick an example, type the classes to look for (any names, "
            "separated by commas), and press **Detect**."
        )
        with gr.Row():
            with gr.Column():
                # The upload as a PIL image in its own mode (Gradio's default converts it to RGB,
                # which clips a 16-bit image to white): the project's image reader converts it.
                image = tolerant_image(
                    label="Image",
                    type="pil",
                    image_mode=None,
                    sources=["upload", "clipboard"],
                    elem_id="image",
                )
                vocabulary = gr.Textbox(
                    label="Vocabulary (comma-separated class names)",
                    value=training,
                    lines=2,
                    elem_id="vocabulary",
                )
                with gr.Row():
                    training_button = gr.Button(
                        f"Training classes ({len(page.training_classes)})",
                        size="sm",
                        elem_id="preset-training",
                    )
                    lvis_button = gr.Button(
                        f"LVIS ({len(lvis_names)})",
                        size="sm",
                        elem_id="preset-lvis",
                        visible=bool(lvis_names),
                    )
                threshold = gr.Slider(
                    0.0,
                    1.0,
                    value=page.predictor.score_thresh,
                    step=0.01,
                    label="Score threshold",
                    elem_id="threshold",
                )
                detect = gr.Button("Detect", variant="primary", elem_id="detect")
            with gr.Column():
                result = gr.Image(
                    label="Detections", type="numpy", interactive=False, elem_id="result"
                )
                status = gr.Markdown(elem_id="status")
                table = gr.Dataframe(
                    headers=TABLE_HEADERS,
                    label="Detections (boxes in pixels: x0, y0, x1, y1)",
                    interactive=False,
                    elem_id="detections",
                )
        if examples:
            gr.Examples(examples=[[p] for p in examples], inputs=[image], label="Examples")
        training_button.click(lambda: training, outputs=vocabulary)
        lvis_button.click(lambda: ", ".join(lvis_names), outputs=vocabulary)
        detect.click(
            page.detect, inputs=[image, vocabulary, threshold], outputs=[result, table, status]
        )
    return blocks


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to config file")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (0.0.0.0: the network)"
    )
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--examples", default=EXAMPLES, help="folder of example images")
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config KEY VALUE pairs"
    )
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="gridclip_d2")
    predictor = GridCLIPPredictor.from_config_file(args.config_file, opts=args.opts)
    lvis_names = list(builtin_vocabulary("lvis").names)
    blocks = build_page(DetectionPage(predictor), example_images(args.examples), lvis_names)
    blocks.launch(
        server_name=args.host,
        server_port=args.port,
        share=False,
        show_error=True,
        footer_links=[],
        theme=gr.themes.Default(font=["sans-serif"], font_mono=["monospace"]),
        quiet=True,  # Gradio's own lines suggest a public share link, which this page never makes
        prevent_thread_lock=True,
    )
    logging.getLogger("gridclip_d2.app").info(f"Web page: {blocks.local_url} (Ctrl+C to stop)")
    blocks.block_thread()


if __name__ == "__main__":
    main()
