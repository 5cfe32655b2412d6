"""Visualisation of GridCLIP predictions on images and videos, with an optional custom vocabulary.

:class:`VisualizationDemo` wraps Detectron2's ``DefaultPredictor`` (weights from MODEL.WEIGHTS,
test-time resize, BGR input) and draws with Detectron2's ``Visualizer``, labelling boxes with the
model's own vocabulary (``model.vocabulary``: what its class ids index). A vocabulary given here
replaces the model's with ``model.set_vocabulary(names=...)``; building the model with it
(MODEL.GRIDCLIP.CLASS_NAMES, as demo.py does) embeds it only once.
"""
import hashlib
from typing import Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.structures import Instances
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode, VisImage, Visualizer

__all__ = ["VisualizationDemo", "vocabulary_metadata"]


def vocabulary_metadata(names: Sequence[str]):
    """A MetadataCatalog entry whose ``thing_classes`` are ``names`` (one entry per vocabulary:
    Detectron2's metadata refuses to change a key once set)."""
    digest = hashlib.sha1("\n".join(names).encode()).hexdigest()[:12]
    meta = MetadataCatalog.get(f"__gridclip_demo_vocabulary_{digest}")
    if not meta.get("thing_classes"):
        meta.set(thing_classes=list(names))
    return meta


class VisualizationDemo:
    """Run the model on BGR images / video frames and draw boxes with class names and scores.

    Args:
        cfg: a frozen Detectron2 config (MODEL.WEIGHTS is loaded by ``DefaultPredictor``).
        vocabulary: class names to detect instead of the model's vocabulary; None = keep it.
        confidence_threshold: detections below this score are not drawn.
        instance_mode: Detectron2's ``ColorMode`` for the Visualizer.
    """

    def __init__(
        self,
        cfg,
        vocabulary: Optional[Sequence[str]] = None,
        confidence_threshold: float = 0.5,
        instance_mode=ColorMode.IMAGE,
    ):
        self.predictor = DefaultPredictor(cfg)
        model = self.predictor.model
        if vocabulary is not None:
            names = [str(n) for n in vocabulary]
            if not names:
                raise ValueError("the vocabulary is empty: give at least one class name")
            if names != model.vocabulary:
                model.set_vocabulary(names=names)
        if not model.vocabulary:
            raise ValueError("the model's vocabulary has no names (set_vocabulary with embeddings only): "
                             "give the names to label boxes with")
        self.metadata = vocabulary_metadata(model.vocabulary)
        self.confidence_threshold = float(confidence_threshold)
        self.instance_mode = instance_mode

    @property
    def class_names(self) -> List[str]:
        return list(self.metadata.thing_classes)

    def _confident(self, predictions: dict) -> Instances:
        instances = predictions["instances"].to("cpu")
        return instances[instances.scores >= self.confidence_threshold]

    def run_on_image(self, image: np.ndarray) -> Tuple[dict, VisImage]:
        """Predict on an H x W x 3 uint8 BGR image; return (predictions, drawn image)."""
        predictions = self.predictor(image)
        rgb = image[:, :, ::-1]
        visualizer = Visualizer(rgb, self.metadata, instance_mode=self.instance_mode)
        vis = visualizer.draw_instance_predictions(predictions=self._confident(predictions))
        return predictions, vis

    def run_on_video(self, video: cv2.VideoCapture) -> Iterator[np.ndarray]:
        """Yield each frame of ``video`` with the predictions drawn (BGR, H x W x 3 uint8)."""
        visualizer = VideoVisualizer(self.metadata, self.instance_mode)
        while video.isOpened():
            ok, frame = video.read()
            if not ok:
                break
            predictions = self.predictor(frame)
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            vis = visualizer.draw_instance_predictions(rgb, self._confident(predictions))
            yield cv2.cvtColor(vis.get_image(), cv2.COLOR_RGB2BGR)
