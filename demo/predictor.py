"""Drawing GridCLIP's detections on images and videos with Detectron2's ``Visualizer``.

:class:`VisualizationDemo` runs :class:`gridclip_d2.GridCLIPPredictor` (weights loaded once,
test-time resize, any vocabulary, one box and one label per object: the display filtering of
MODEL.GRIDCLIP.DISPLAY) and draws the result, labelling boxes with the predictor's vocabulary.
"""

import zlib
from typing import Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from detectron2.data.catalog import Metadata
from detectron2.structures import Instances
from detectron2.utils.colormap import colormap
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode, VisImage, Visualizer

from gridclip_d2.predictor import GridCLIPPredictor

__all__ = [
    "VisualizationDemo",
    "class_color",
    "draw_instances",
    "keep_labels_inside",
    "vocabulary_metadata",
]


def vocabulary_metadata(names: Sequence[str]) -> Metadata:
    """Metadata whose ``thing_classes`` are ``names``, for the Visualizer: not registered in
    Detectron2's MetadataCatalog, so a page that sees many vocabularies adds nothing global."""
    return Metadata(thing_classes=list(names))


_PALETTE = colormap(rgb=True, maximum=1)  # Detectron2's colours, N x 3 RGB in [0, 1]


def class_color(name: str) -> np.ndarray:
    """The colour (RGB in [0, 1]) that boxes of class ``name`` are drawn in: one of Detectron2's
    palette colours chosen by a hash of the name, so a class keeps its colour across images, runs
    and vocabularies (the Visualizer otherwise draws each box in a random colour)."""
    return _PALETTE[zlib.crc32(name.encode("utf-8")) % len(_PALETTE)]


def keep_labels_inside(vis: VisImage) -> VisImage:
    """Move every label of ``vis`` that runs past an edge of the image back inside it.

    Detectron2's Visualizer puts a label at a corner of its box whatever the label's width, so the
    label of a box near the right edge is cut off ("yellow circ"). Each label's extent is
    matplotlib's own (its rendered text, at the figure's scale). A label that overflows moves by
    the overflow, and where that would cover another label, one or two lines up or down instead
    (the first free place); the other labels stay where the Visualizer put them. Written here: the
    Visualizer has no such option.
    """
    renderer = vis.canvas.get_renderer()
    fig_box = vis.fig.bbox  # display pixels, origin bottom left
    to_data = vis.ax.transData.inverted()
    texts = list(vis.ax.texts)
    extents = [t.get_window_extent(renderer) for t in texts]
    for i, (text, box) in enumerate(zip(texts, extents)):
        # right edge first, then the left one: a label wider than the image shows its start
        dx = max(min(0.0, fig_box.x1 - box.x1), fig_box.x0 - box.x0)
        # past the bottom: up, unless that hides its top
        dy = min(max(0.0, fig_box.y0 - box.y0), fig_box.y1 - box.y1)
        if dx == 0.0 and dy == 0.0:
            continue
        others = extents[:i] + extents[i + 1 :]
        places = [box.translated(dx, dy + k * box.height) for k in (0, 1, -1, 2, -2)]
        free = [
            p
            for p in places
            if p.y0 >= fig_box.y0 - 0.5
            and p.y1 <= fig_box.y1 + 0.5
            and not any(p.overlaps(o) for o in others)
        ]
        place = (free or places)[0]
        shift = to_data.transform((place.x0 - box.x0, place.y0 - box.y0)) - to_data.transform(
            (0.0, 0.0)
        )
        x, y = text.get_position()
        text.set_position((x + shift[0], y + shift[1]))
        extents[i] = place
    return vis


def draw_instances(
    rgb: np.ndarray, instances: Instances, names: Sequence[str], instance_mode=ColorMode.IMAGE
) -> VisImage:
    """``instances`` drawn on an H x W x 3 RGB image, labelled with ``names`` (the vocabulary):
    ``Visualizer.draw_instance_predictions``'s boxes and "name 70%" labels, each class in its
    :func:`class_color`, every label inside the image (:func:`keep_labels_inside`)."""
    visualizer = Visualizer(rgb, vocabulary_metadata(names), instance_mode=instance_mode)
    classes = instances.pred_classes.tolist()
    labels = [
        f"{names[c]} {score * 100:.0f}%" for c, score in zip(classes, instances.scores.tolist())
    ]
    vis = visualizer.overlay_instances(
        boxes=instances.pred_boxes.to("cpu"),
        labels=labels,
        assigned_colors=[class_color(names[c]) for c in classes],
    )
    return keep_labels_inside(vis)


class VisualizationDemo:
    """Run the model on BGR images / video frames and draw boxes with class names and scores.

    Args:
        cfg: a GridCLIP config (MODEL.WEIGHTS is loaded).
        vocabulary: classes to detect instead of the model's vocabulary (names, and
            ``gridclip_d2.vocabulary.ImageExemplar`` entries for classes given by example, see
            ``GridCLIPPredictor.set_vocabulary``); None = keep it.
        confidence_threshold: detections below this score are not drawn; None = the config's
            MODEL.GRIDCLIP.DISPLAY.SCORE_THRESH.
        instance_mode: Detectron2's ``ColorMode`` for the Visualizer.
    """

    def __init__(
        self,
        cfg,
        vocabulary: Optional[Sequence] = None,
        confidence_threshold: Optional[float] = None,
        instance_mode=ColorMode.IMAGE,
    ):
        self.predictor = GridCLIPPredictor(cfg, vocabulary, score_thresh=confidence_threshold)
        self.instance_mode = instance_mode

    @property
    def confidence_threshold(self) -> float:
        return self.predictor.score_thresh

    @property
    def class_names(self) -> List[str]:
        return self.predictor.vocabulary

    def run_on_image(self, image: np.ndarray) -> Tuple[Instances, VisImage]:
        """Predict on an H x W x 3 uint8 BGR image; return (the detections drawn, drawn image)."""
        instances = self.predictor(image, format="BGR")
        vis = draw_instances(image[:, :, ::-1], instances, self.class_names, self.instance_mode)
        return instances, vis

    def run_on_video(self, video: cv2.VideoCapture) -> Iterator[np.ndarray]:
        """Yield each frame of ``video`` with the predictions drawn (BGR, H x W x 3 uint8)."""
        visualizer = VideoVisualizer(vocabulary_metadata(self.class_names), self.instance_mode)
        while video.isOpened():
            ok, frame = video.read()
            if not ok:
                break
            instances = self.predictor(frame, format="BGR")
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            vis = keep_labels_inside(visualizer.draw_instance_predictions(rgb, instances))
            yield cv2.cvtColor(vis.get_image(), cv2.COLOR_RGB2BGR)
