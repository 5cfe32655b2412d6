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

Classes can also be given by example ("Classes by example"): upload an image (or a crop), name it,
optionally give a box of it in pixels, and **Add example**; detections like it are then named so
(the example's embedding by the model's CLIP image encoder is that class's row; several examples of
one name are averaged). The examples stay for the page's session until **Clear examples**.
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
from gridclip_d2.data.image_io import image_to_array  # noqa: E402
from gridclip_d2.vocabulary import (  # noqa: E402
    ImageExemplar,
    builtin_vocabulary,
    parse_box,
    parse_vocabulary,
)

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "examples")
TABLE_HEADERS = ["class", "score", "x0", "y0", "x1", "y1"]
EXAMPLE_HEADERS = ["class", "region", "image size"]
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
        self,
        image: Union[None, np.ndarray, Image.Image],
        vocabulary: str,
        threshold: float,
        examples: Sequence[ImageExemplar] = (),
    ) -> Tuple[Optional[np.ndarray], List[list], str]:
        """(drawn RGB image, table rows, message) for ``image``, comma-separated names and the
        classes given by ``examples`` (from :meth:`add_example`; with them, the names may be
        empty). ``image``: the upload as a PIL image in its own mode (read by the project's image
        reader, :mod:`gridclip_d2.data.image_io`, through the predictor: a 16-bit image is scaled
        to 8 bits), or an RGB array."""
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
            examples = list(examples or ())
            names = [] if examples and not (vocabulary or "").strip(", \n") else None
            names = vocabulary_from_text(vocabulary) if names is None else names
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
            try:
                self.predictor.set_vocabulary(names + examples)
            except ValueError as e:  # a name both typed and given by example
                return None, [], f"Vocabulary: {e}."
            names = self.predictor.vocabulary
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

    def add_example(
        self,
        examples: Optional[List[ImageExemplar]],
        image: Union[None, np.ndarray, Image.Image],
        name: str,
        box: str,
    ) -> Tuple[List[ImageExemplar], List[list], str]:
        """(the examples, their table rows, message) after adding ``image`` (or its region
        ``box``, "x0, y0, x1, y1" pixels; empty: the whole image) as an example of ``name``. It is
        embedded at once, so an unusable one is refused here, with the reason."""
        examples = list(examples or [])
        if image is None:
            return examples, example_rows(examples), "Upload an example image first."
        if isinstance(image, UnreadableUpload):
            message = f"The example is not an image that can be read ({image})."
            return examples, example_rows(examples), message
        try:
            region = parse_box(box, what="example box")
            if isinstance(image, Image.Image):  # the project's reader (16-bit scaled), RGB
                image = image_to_array(image, "RGB")
            exemplar = ImageExemplar(name or "", np.asarray(image), region)
            with self.lock:
                self.predictor.exemplar_embeddings([exemplar])  # checks the box and the pixels
        except ValueError as e:
            hint = " Give a name and, optionally, a box as x0, y0, x1, y1 in the image's pixels."
            return examples, example_rows(examples), f"Example not added: {e}.{hint}"
        examples.append(exemplar)
        count = sum(e.name == exemplar.name for e in examples)
        return (
            examples,
            example_rows(examples),
            f"Added an example of '{exemplar.name}' ({count} of that name, averaged). "
            "Press Detect to find more like it.",
        )


def example_rows(examples: Sequence[ImageExemplar]) -> List[list]:
    """The table of the classes given by example: name, region, image size."""
    rows = []
    for e in examples:
        height, width = np.asarray(e.image).shape[:2]
        region = "whole image" if e.box is None else ", ".join(f"{v:g}" for v in e.box)
        rows.append([e.name, region, f"{width} x {height}"])
    return rows


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
                with gr.Accordion("Classes by example", open=False, elem_id="by-example"):
                    gr.Markdown(
                        "Find more things like an example: upload an image (or a crop), name it, "
                        "optionally give a box of it, and add it. Several examples of one name "
                        "are averaged. Examples join the typed classes (the text box may then be "
                        "empty)."
                    )
                    example_image = tolerant_image(
                        label="Example image",
                        type="pil",
                        image_mode=None,
                        sources=["upload", "clipboard"],
                        elem_id="example-image",
                    )
                    with gr.Row():
                        example_name = gr.Textbox(label="Name", elem_id="example-name")
                        example_box = gr.Textbox(
                            label="Box (optional)",
                            placeholder="x0, y0, x1, y1 in pixels; empty: the whole image",
                            elem_id="example-box",
                        )
                    with gr.Row():
                        add_button = gr.Button("Add example", size="sm", elem_id="add-example")
                        clear_button = gr.Button(
                            "Clear examples", size="sm", elem_id="clear-examples"
                        )
                    example_status = gr.Markdown(elem_id="example-status")
                    example_table = gr.Dataframe(
                        headers=EXAMPLE_HEADERS,
                        label="Classes by example",
                        interactive=False,
                        elem_id="examples",
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
        examples_state = gr.State([])  # this browser session's ImageExemplar list
        add_button.click(
            page.add_example,
            inputs=[examples_state, example_image, example_name, example_box],
            outputs=[examples_state, example_table, example_status],
        )
        clear_button.click(
            lambda: ([], [], "No examples."),
            outputs=[examples_state, example_table, example_status],
        )
        training_button.click(lambda: training, outputs=vocabulary)
        lvis_button.click(lambda: ", ".join(lvis_names), outputs=vocabulary)
        detect.click(
            page.detect,
            inputs=[image, vocabulary, threshold, examples_state],
            outputs=[result, table, status],
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
        "--bf16",
        action="store_true",
        help="CPU inference in bfloat16 (MODEL.GRIDCLIP.CPU_BF16) where the CPU has the units",
    )
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config KEY VALUE pairs"
    )
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="gridclip_d2")
    predictor = GridCLIPPredictor.from_config_file(args.config_file, opts=args.opts, bf16=args.bf16)
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
