"""Open-vocabulary detection from Python: :class:`GridCLIPPredictor`.

    from gridclip_d2 import GridCLIPPredictor
    predictor = GridCLIPPredictor.from_config_file(
        "configs/GridCLIP_synthetic.yaml", weights="output/GridCLIP_synthetic/model_final.pth")
    predictor.set_vocabulary(["blue square", "yellow circle", "green cross"])
    instances = predictor("datasets/synthetic/val/100001.jpg")
    print(instances.pred_class_names, instances.scores, instances.pred_boxes)

Like Detectron2's ``DefaultPredictor`` (model built and weights loaded once, test-time resize, eval
mode), plus what open-vocabulary use needs: any vocabulary (names, a ``.npy`` of text embeddings
with its sidecar, a names file), changed without reloading the model, with each vocabulary's text
embeddings cached; RGB or BGR arrays, PIL images or paths; several images in batches; and class
names on every detection (``instances.pred_class_names``).

What it returns by default is what a person looks at: one box and one label per object. The model's
own output follows the LVIS protocol (300 detections per image down to score 1e-4, class-aware NMS),
which keeps other-class copies of a box for the AP of every class; the predictor drops detections
under ``score_thresh`` and suppresses boxes that overlap a higher-scoring box of any class by more
than ``nms_thresh`` IoU (MODEL.GRIDCLIP.DISPLAY). ``display=False`` returns the model's output as
is.
"""

import logging
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.layers import nms
from detectron2.modeling import build_model
from detectron2.structures import Instances

from .engine.checkpointer import GridCLIPCheckpointer
from .engine.setup import setup_cfg
from .modeling.clip_text import prompts_from_cfg
from .modeling.clip_weights import clip_state_dict_from_cfg, text_fingerprint
from .modeling.model_vocabulary import check_sidecar, read_sidecar
from .modeling.text_classifier import load_text_embeddings

__all__ = ["ClassNames", "GridCLIPPredictor", "parse_vocabulary"]

logger = logging.getLogger(__name__)

ImageLike = Union[str, os.PathLike, np.ndarray, "PIL.Image.Image"]  # noqa: F821
VocabularyLike = Union[Sequence[str], str, os.PathLike]


class ClassNames(list):
    """A list of class names that ``Instances`` can index like its tensors (a boolean mask, an
    index tensor or array, a slice) and concatenate: Detectron2's ``Instances`` indexes every field
    with the same index, which a plain list does not accept. Written here: Detectron2 has no such
    field type."""

    def __getitem__(self, item):
        if isinstance(item, (int, np.integer)):
            return list.__getitem__(self, int(item))
        if isinstance(item, slice):
            return ClassNames(list.__getitem__(self, item))
        index = torch.as_tensor(np.asarray(item) if not isinstance(item, torch.Tensor) else item)
        if index.dtype == torch.bool:
            if index.numel() != len(self):
                raise IndexError(f"boolean index of {index.numel()} entries for {len(self)} names")
            index = index.nonzero().flatten()
        return ClassNames(list.__getitem__(self, int(i)) for i in index.flatten().tolist())

    @staticmethod
    def cat(lists: Sequence["ClassNames"]) -> "ClassNames":
        return ClassNames(name for names in lists for name in names)


def parse_vocabulary(vocabulary: VocabularyLike) -> Tuple[Optional[List[str]], Optional[str]]:
    """``(names, npy_path)`` of a vocabulary given as a list of names, a comma-separated string, a
    ``.txt`` file (one name a line), a ``.json`` list of names, or a text-embedding ``.npy`` (whose
    sidecar names its rows; ``names`` is None when it has none)."""
    if isinstance(vocabulary, (str, os.PathLike)):
        text = os.fspath(vocabulary)
        if text.endswith(".npy"):
            if not os.path.isfile(text):
                raise FileNotFoundError(f"vocabulary: no such text-embedding file: {text}")
            meta = read_sidecar(text)
            return (list(meta["names"]) if meta else None), text
        if text.endswith((".txt", ".json")) and os.path.isfile(text):
            from .data.vocabulary import get_vocabulary

            return [c["name"] for c in get_vocabulary("custom", file=text)], None
        if text.endswith((".txt", ".json")):
            raise FileNotFoundError(f"vocabulary: no such names file: {text}")
        names = [n.strip() for n in text.split(",")]
    else:
        names = [str(n).strip() for n in vocabulary]
    names = [n for n in names if n]
    if not names:
        raise ValueError("the vocabulary is empty: give at least one class name")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"the vocabulary names {duplicates} more than once")
    return names, None


class GridCLIPPredictor:
    """Build a GridCLIP model from a config once, then detect any vocabulary in images.

    Args:
        cfg: a GridCLIP config (e.g. from :func:`gridclip_d2.engine.setup_cfg` with
            ``mode="inference"``); MODEL.WEIGHTS is loaded, INPUT.MIN/MAX_SIZE_TEST resize.
        vocabulary: the classes to detect (see :meth:`set_vocabulary`); None = the model's own.
        score_thresh, nms_thresh: display filtering (module docstring); None = the config's
            MODEL.GRIDCLIP.DISPLAY.SCORE_THRESH / NMS_THRESH.
        batch_size: images per forward pass in :meth:`predict`.
    """

    def __init__(
        self,
        cfg: CfgNode,
        vocabulary: Optional[VocabularyLike] = None,
        *,
        score_thresh: Optional[float] = None,
        nms_thresh: Optional[float] = None,
        batch_size: int = 4,
    ):
        self.cfg = cfg.clone()
        self.cfg.freeze()
        self.model = build_model(self.cfg).eval()
        if cfg.MODEL.WEIGHTS:
            GridCLIPCheckpointer(self.model, allow_partial=cfg.MODEL.ALLOW_PARTIAL_WEIGHTS).load(
                cfg.MODEL.WEIGHTS
            )
        else:
            logger.warning("MODEL.WEIGHTS is empty: the detector's head is untrained")
        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(
                f"INPUT.FORMAT must be RGB or BGR for the predictor, got {self.input_format!r}"
            )
        display = cfg.MODEL.GRIDCLIP.DISPLAY
        self.score_thresh = float(display.SCORE_THRESH if score_thresh is None else score_thresh)
        self.nms_thresh = float(display.NMS_THRESH if nms_thresh is None else nms_thresh)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        # Text embeddings of every vocabulary used so far (C x D, on the CPU), by names.
        self._embeddings: Dict[Tuple[str, ...], torch.Tensor] = {}
        if self.model.vocabulary:
            self._embeddings[tuple(self.model.vocabulary)] = (
                self.model.head.classifier.embeddings.cpu()
            )
        if vocabulary is not None:
            self.set_vocabulary(vocabulary)
        if not self.model.vocabulary:
            raise ValueError(
                "the model's vocabulary has no names: give the names to label boxes with"
            )

    @classmethod
    def from_config_file(
        cls,
        config_file: str,
        weights: Optional[str] = None,
        opts: Sequence[str] = (),
        vocabulary: Optional[VocabularyLike] = None,
        device: Optional[str] = None,
        **kwargs,
    ) -> "GridCLIPPredictor":
        """A predictor from a config file (a shipped config, or the ``config.yaml`` training saved
        beside its checkpoints), ``weights`` (MODEL.WEIGHTS), KEY VALUE ``opts`` and ``device``
        (default: the config's, or the CPU where there is no CUDA)."""
        overrides = []
        if weights is not None:
            if not os.path.isfile(weights):
                raise FileNotFoundError(f"weights: no such checkpoint: {weights}")
            overrides += ["MODEL.WEIGHTS", weights]
        if device is not None:
            overrides += ["MODEL.DEVICE", device]
        cfg = setup_cfg(config_file, opts, mode="inference", overrides=overrides)
        return cls(cfg, vocabulary, **kwargs)

    # ------------------------------------------------------------------ vocabulary
    @property
    def vocabulary(self) -> List[str]:
        """The class names that detections are labelled with (``pred_class_names``)."""
        return list(self.model.vocabulary)

    def set_vocabulary(self, vocabulary: VocabularyLike) -> None:
        """Detect ``vocabulary`` from now on: a list of names, a comma-separated string, a ``.txt``
        / ``.json`` names file, or a ``.npy`` of text embeddings from
        ``tools/dump_text_embeddings.py`` (its sidecar must match this model's CLIP and prompts).
        Names are embedded with the model's CLIP text encoder once; a vocabulary used before is
        taken from the cache. The model is not reloaded."""
        names, npy = parse_vocabulary(vocabulary)
        if npy is not None:
            if names is None:
                raise ValueError(
                    f"{npy} has no sidecar naming its rows: pass the names as a list instead"
                )
            if tuple(names) not in self._embeddings:
                check_sidecar(
                    npy,
                    read_sidecar(npy),
                    names=names,
                    names_source="its own names",
                    arch=self.cfg.MODEL.CLIP.ARCH,
                    fingerprint=text_fingerprint(clip_state_dict_from_cfg(self.cfg)),
                    prompts=prompts_from_cfg(self.cfg),
                )
                self._embeddings[tuple(names)] = load_text_embeddings(npy, expected_rows=len(names))
        key = tuple(names)
        if key == tuple(self.model.vocabulary or ()):
            return
        if key in self._embeddings:
            self.model.set_vocabulary(names=names, embeddings=self._embeddings[key])
        else:
            self.model.set_vocabulary(names=names)
            self._embeddings[key] = self.model.head.classifier.embeddings.cpu()

    # ------------------------------------------------------------------ inference
    def _to_model_format(self, image: ImageLike, format: str) -> np.ndarray:
        """H x W x 3 uint8 in INPUT.FORMAT; ``format`` is that of an array input."""
        if isinstance(image, (str, os.PathLike)):
            path = os.fspath(image)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"image: no such file: {path}")
            try:
                return read_image(path, format=self.input_format)
            except Exception as e:
                raise ValueError(f"image: cannot read {path} ({type(e).__name__}: {e})") from None
        if not isinstance(image, np.ndarray):  # a PIL image
            if not hasattr(image, "convert"):
                raise TypeError(
                    "image: expected a path, a numpy array or a PIL image, "
                    f"got {type(image).__name__}"
                )
            image, format = np.asarray(image.convert("RGB")), "RGB"
        if format not in ("RGB", "BGR"):
            raise ValueError(f"format must be 'RGB' or 'BGR', got {format!r}")
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4) or min(image.shape[:2]) < 1:
            raise ValueError(f"image: expected an H x W x 3 array, got shape {image.shape}")
        image = image[:, :, :3]
        if image.dtype != np.uint8:
            raise ValueError(f"image: expected a uint8 array (0-255), got {image.dtype}")
        return image if format == self.input_format else image[:, :, ::-1]

    def _inputs(self, image: np.ndarray) -> dict:
        height, width = image.shape[:2]
        resized = self.aug.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        return {"image": tensor, "height": height, "width": width}

    def display_filter(self, instances: Instances) -> Instances:
        """What is shown of the model's ``instances``: scores >= ``score_thresh``, then NMS across
        classes at ``nms_thresh`` (1.0 keeps every box); sorted by score. No Python branch on the
        data, so a trace of it holds for any number of detections (tools/export_model.py)."""
        instances = instances[instances.scores >= self.score_thresh]
        return instances[nms(instances.pred_boxes.tensor, instances.scores, self.nms_thresh)]

    @torch.no_grad()
    def predict(
        self, images: Iterable[ImageLike], format: str = "BGR", display: bool = True
    ) -> List[Instances]:
        """Detections in each image (paths, PIL images, or H x W x 3 uint8 arrays in ``format``:
        "BGR" as OpenCV reads them, "RGB" as PIL / matplotlib do), ``batch_size`` at a time.

        Returns: one ``Instances`` per image, on the CPU, in the image's own pixel coordinates:
        ``pred_boxes`` (XYXY), ``scores``, ``pred_classes`` (indices into :attr:`vocabulary`) and
        ``pred_class_names``; sorted by score. ``display=False``: the model's LVIS-protocol output.
        """
        arrays = [self._to_model_format(image, format) for image in images]
        results = []
        protocol_thresh = self.model.test_score_thresh
        # Decoding only the displayed scores gives the same boxes: NMS is greedy by score, so
        # lower-scoring boxes never suppress higher ones, and the per-level top-k only gains room.
        # (The model keeps scores > its threshold, the display those >= score_thresh.)
        below = float(np.nextafter(np.float32(self.score_thresh), np.float32(-np.inf)))
        self.model.test_score_thresh = max(protocol_thresh, below) if display else protocol_thresh
        try:
            outputs = []
            for start in range(0, len(arrays), self.batch_size):
                outputs += self.model(
                    [self._inputs(a) for a in arrays[start : start + self.batch_size]]
                )
        finally:
            self.model.test_score_thresh = protocol_thresh
        names = self.model.vocabulary
        for output in outputs:
            instances = output["instances"].to("cpu")
            instances = instances[instances.scores.argsort(descending=True)]
            if display:
                instances = self.display_filter(instances)
            instances.pred_class_names = ClassNames(names[int(c)] for c in instances.pred_classes)
            results.append(instances)
        return results

    def __call__(self, image: ImageLike, format: str = "BGR", display: bool = True) -> Instances:
        """Detections in one image (see :meth:`predict`)."""
        return self.predict([image], format=format, display=display)[0]
