"""Open-vocabulary detection from Python: :class:`GridCLIPPredictor`.

    from gridclip_d2 import GridCLIPPredictor
    predictor = GridCLIPPredictor.from_config_file(
        "configs/GridCLIP_synthetic.yaml", weights="output/GridCLIP_synthetic/model_final.pth")
    predictor.set_vocabulary(["blue square", "yellow circle", "green cross"])
    instances = predictor("datasets/synthetic/val/100001.jpg")
    print(instances.pred_class_names, instances.scores, instances.pred_boxes)
    # classes by example: a region of an image (XYXY pixels) beside names
    predictor.set_vocabulary(
        ["blue square", ImageExemplar("like this", "photo.jpg", box=(10, 20, 60, 70))])

Like Detectron2's ``DefaultPredictor`` (model built and weights loaded once, test-time resize, eval
mode), plus what open-vocabulary use needs: any vocabulary (names, a ``.npy`` of text embeddings
with its sidecar, a names file), changed without reloading the model, with the text embeddings of
the vocabularies used last cached; RGB or BGR arrays, PIL images or paths; several images in
batches; and class names on every detection (``instances.pred_class_names``). A class can also be
given by example images (:class:`gridclip_d2.vocabulary.ImageExemplar`): its classifier row is then
the CLIP image encoder's embedding of the example (:mod:`gridclip_d2.modeling.exemplars`).

What it returns by default is what a person looks at: one box and one label per object. The model's
own output follows the LVIS protocol (300 detections per image down to score 1e-4, class-aware NMS),
which keeps other-class copies of a box for the AP of every class; the predictor drops detections
under ``score_thresh`` and suppresses boxes that overlap a higher-scoring box of any class by more
than ``nms_thresh`` IoU (MODEL.GRIDCLIP.DISPLAY). ``display=False`` returns the model's output as
is.
"""

import collections
import contextlib
import itertools
import logging
import os
from collections.abc import Sequence as SequenceABC
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.layers import nms
from detectron2.modeling import build_model
from detectron2.structures import Instances

from .config import teacher_input_size_from_cfg
from .data.image_io import image_to_array, read_image
from .engine.checkpointer import GridCLIPCheckpointer
from .engine.setup import setup_cfg
from .modeling.clip_resnet import build_clip_teacher
from .modeling.exemplars import exemplar_crops, exemplar_rows
from .modeling.text_classifier import vocabulary_text_embeddings
from .vocabulary import (
    ImageExemplar,
    VocabularyLike,
    has_exemplars,
    parse_vocabulary,
    sidecar_names,
    split_vocabulary_entries,
)

__all__ = ["ClassNames", "GridCLIPPredictor", "config_with_vocabulary"]

logger = logging.getLogger(__name__)

ImageLike = Union[str, os.PathLike, np.ndarray, "PIL.Image.Image"]  # noqa: F821


class ClassNames(SequenceABC):
    """The class names of detections, a sequence that ``Instances`` can index like its tensors (a
    boolean mask, an index tensor or array, a slice) and concatenate: Detectron2's ``Instances``
    indexes every field with the same index, which a plain list does not accept. Not a ``list``
    subclass: ``Instances.cat`` turns a list field into a plain list, and calls ``cat`` of any other
    type. Equal to a list of the same names, and printed like one. Written here: Detectron2 has no
    such field type."""

    def __init__(self, names: Iterable[str] = ()):
        self._names = list(names)

    def __len__(self) -> int:
        return len(self._names)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __getitem__(self, item):
        if isinstance(item, (int, np.integer)):
            return self._names[int(item)]
        if isinstance(item, slice):
            return ClassNames(self._names[item])
        index = torch.as_tensor(np.asarray(item) if not isinstance(item, torch.Tensor) else item)
        if index.dtype == torch.bool:
            if index.numel() != len(self):
                raise IndexError(f"boolean index of {index.numel()} entries for {len(self)} names")
            index = index.nonzero().flatten()
        return ClassNames(self._names[int(i)] for i in index.flatten().tolist())

    def __eq__(self, other) -> bool:
        if isinstance(other, ClassNames):
            return self._names == other._names
        if isinstance(other, list):
            return self._names == other
        return NotImplemented

    __hash__ = None  # mutable-list semantics: equal to lists, so not hashable

    def __repr__(self) -> str:
        return repr(self._names)  # what a user prints: the names, as a list

    @staticmethod
    def cat(lists: Sequence["ClassNames"]) -> "ClassNames":
        return ClassNames(name for names in lists for name in names)


def config_with_vocabulary(cfg: CfgNode, vocabulary: VocabularyLike) -> CfgNode:
    """A clone of ``cfg`` whose model is built with ``vocabulary`` (parsed by
    ``gridclip_d2.vocabulary.parse_vocabulary``, as every entry point does) instead of the config's:
    the names go to MODEL.GRIDCLIP.CLASS_NAMES (VOCABULARY cleared). A text-embedding ``.npy``
    becomes TEXT_EMBEDDINGS (its rows, checked against its sidecar); otherwise the config's
    TEXT_EMBEDDINGS is only kept when its sidecar lists exactly these names, so a missing or
    other-vocabulary file (e.g. LVIS's) is neither needed nor embedded to be thrown away: the names
    are embedded when the model is built."""
    vocabulary = parse_vocabulary(vocabulary, what="vocabulary")
    names = list(vocabulary.names)
    cfg = cfg.clone()
    cfg.defrost()
    g = cfg.MODEL.GRIDCLIP
    g.VOCABULARY = ""
    g.CLASS_NAMES = names
    if vocabulary.embeddings_file is not None:
        g.TEXT_EMBEDDINGS = vocabulary.embeddings_file
    elif g.TEXT_EMBEDDINGS and sidecar_names(g.TEXT_EMBEDDINGS) != names:
        g.TEXT_EMBEDDINGS = ""
    return cfg


class GridCLIPPredictor:
    """Build a GridCLIP model from a config once, then detect any vocabulary in images.

    Args:
        cfg: a GridCLIP config (e.g. from :func:`gridclip_d2.engine.setup_cfg` with
            ``mode="inference"``); MODEL.WEIGHTS is loaded, INPUT.MIN/MAX_SIZE_TEST resize.
        vocabulary: the classes to detect (see :meth:`set_vocabulary`); None = the model's own.
            Given (names only), the model is built with it (:func:`config_with_vocabulary`): the
            config's vocabulary is never embedded or loaded. With image exemplars, the model is
            built with the config's vocabulary, then given this one.
        score_thresh, nms_thresh: display filtering (module docstring); None = the config's
            MODEL.GRIDCLIP.DISPLAY.SCORE_THRESH / NMS_THRESH.
        batch_size: images per forward pass in :meth:`predict`.
    """

    #: how many vocabularies' text embeddings are kept (least recently used dropped first)
    cache_size = 16

    def __init__(
        self,
        cfg: CfgNode,
        vocabulary: Optional[VocabularyLike] = None,
        *,
        score_thresh: Optional[float] = None,
        nms_thresh: Optional[float] = None,
        batch_size: int = 4,
    ):
        text_only = vocabulary is not None and not has_exemplars(vocabulary)
        self.cfg = config_with_vocabulary(cfg, vocabulary) if text_only else cfg.clone()
        self.cfg.freeze()
        cfg = self.cfg
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(
                f"INPUT.FORMAT must be RGB or BGR for the predictor, got {self.input_format!r}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        display = cfg.MODEL.GRIDCLIP.DISPLAY
        self.score_thresh = float(display.SCORE_THRESH if score_thresh is None else score_thresh)
        self.nms_thresh = float(display.NMS_THRESH if nms_thresh is None else nms_thresh)
        self.model = build_model(cfg).eval()
        if cfg.MODEL.WEIGHTS:
            GridCLIPCheckpointer(self.model, allow_partial=cfg.MODEL.ALLOW_PARTIAL_WEIGHTS).load(
                cfg.MODEL.WEIGHTS
            )
        else:
            logger.warning("MODEL.WEIGHTS is empty: the detector's head is untrained")
        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        if not self.model.vocabulary:
            raise ValueError(
                "the model's vocabulary has no names: give the names to label boxes with"
            )
        # Text embeddings (C x D, on the CPU) of the vocabularies used last, by names.
        self._embeddings: "collections.OrderedDict[Tuple[str, ...], torch.Tensor]" = (
            collections.OrderedDict()
        )
        self._remember(self.model.vocabulary, self.model.head.classifier.embeddings)
        # whether the model's rows come from image exemplars (never cached: a name can be both)
        self._rows_from_exemplars = False
        self._teacher: Optional[torch.nn.Module] = None
        if has_exemplars(vocabulary):
            self.set_vocabulary(vocabulary)

    @classmethod
    def from_config_file(
        cls,
        config_file: str,
        weights: Optional[str] = None,
        opts: Sequence[str] = (),
        vocabulary: Optional[VocabularyLike] = None,
        device: Optional[str] = None,
        bf16: bool = False,
        **kwargs,
    ) -> "GridCLIPPredictor":
        """A predictor from a config file (a shipped config, or the ``config.yaml`` training saved
        beside its checkpoints), ``weights`` (MODEL.WEIGHTS), KEY VALUE ``opts`` and ``device``
        (default: the config's, or the CPU where there is no CUDA); ``bf16``: CPU inference in
        bfloat16 (MODEL.GRIDCLIP.CPU_BF16), where the CPU has the units."""
        overrides = []
        if weights is not None:
            if not os.path.isfile(weights):
                raise FileNotFoundError(f"weights: no such checkpoint: {weights}")
            overrides += ["MODEL.WEIGHTS", weights]
        if device is not None:
            overrides += ["MODEL.DEVICE", device]
        if bf16:
            overrides += ["MODEL.GRIDCLIP.CPU_BF16", "True"]
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
        ``tools/dump_text_embeddings.py`` (its sidecar must match this model's CLIP and prompts);
        parsed by ``gridclip_d2.vocabulary.parse_vocabulary``. Names are embedded with the model's
        CLIP text encoder once (or taken from the config's TEXT_EMBEDDINGS when its sidecar lists
        exactly them); the text embeddings of the last :attr:`cache_size` vocabularies are cached.
        The model is not reloaded.

        A list may also hold :class:`~gridclip_d2.vocabulary.ImageExemplar` entries (a name and an
        image, or a region of one): such a class's row is the model's CLIP image encoder's
        normalised embedding of the example (cut and resized as the image-level alignment's teacher
        sees an object), the mean over several exemplars of one name; names and exemplars mix in
        one list, rows in order of first appearance. Errors name the exemplar (unreadable image,
        box empty or outside it)."""
        if has_exemplars(vocabulary):
            self._set_mixed_vocabulary(vocabulary)
            return
        vocabulary = parse_vocabulary(vocabulary, what="set_vocabulary")
        names = list(vocabulary.names)
        key = tuple(names)
        npy = vocabulary.embeddings_file
        if (
            npy is None
            and key == tuple(self.model.vocabulary or ())
            and not self._rows_from_exemplars
        ):
            self._remember(names, self.model.head.classifier.embeddings)
            return
        embeddings = self._embeddings.get(key) if npy is None else None
        if embeddings is None:
            embeddings = vocabulary_text_embeddings(
                self.cfg,
                names,
                npy or self.cfg.MODEL.GRIDCLIP.TEXT_EMBEDDINGS,
                only_if_named=npy is None,
                names_source=vocabulary.source,
                encode=self.model.encode_vocabulary,
            )
        self.model.set_vocabulary(names=names, embeddings=embeddings)
        self._rows_from_exemplars = False
        self._remember(names, self.model.head.classifier.embeddings)

    def _set_mixed_vocabulary(self, entries: Sequence) -> None:
        order, text, exemplars = split_vocabulary_entries(entries, what="set_vocabulary")
        rows = {}
        if text:
            embeddings = self._embeddings.get(tuple(text))
            if embeddings is None:
                embeddings = vocabulary_text_embeddings(
                    self.cfg,
                    text,
                    self.cfg.MODEL.GRIDCLIP.TEXT_EMBEDDINGS,
                    only_if_named=True,
                    names_source="set_vocabulary",
                    encode=self.model.encode_vocabulary,
                )
                self._remember(text, embeddings)
            rows.update(zip(text, embeddings.detach().cpu()))
        names, embeddings = self.exemplar_embeddings(
            [e for name in exemplars for e in exemplars[name]]
        )
        rows.update(zip(names, embeddings.cpu()))
        self.model.set_vocabulary(names=order, embeddings=torch.stack([rows[n] for n in order]))
        self._rows_from_exemplars = True

    @torch.no_grad()
    def exemplar_embeddings(
        self, exemplars: Sequence[ImageExemplar]
    ) -> Tuple[List[str], torch.Tensor]:
        """(names, C x D normalised rows) of image exemplars: one row per name (in order of first
        appearance), the normalised mean of its exemplars' CLIP image embeddings (the frozen
        image encoder of MODEL.CLIP.WEIGHTS, built on first use). Errors name the exemplar."""
        size = teacher_input_size_from_cfg(self.cfg)
        crops = []
        for exemplar in exemplars:
            what = f"image exemplar {exemplar.describe()}"
            try:
                image = self.as_model_array(exemplar.image, format="RGB")
            except (OSError, ValueError, TypeError) as e:
                raise type(e)(f"{what}: {e}") from e
            if self.input_format == "BGR":
                image = np.ascontiguousarray(image[:, :, ::-1])  # the teacher takes RGB
            crops.append(exemplar_crops(image, exemplar.box, size, what))
        return exemplar_rows(self.teacher(), crops, [e.name for e in exemplars])

    def teacher(self) -> torch.nn.Module:
        """The frozen CLIP image encoder that embeds image exemplars: the image-level alignment's
        teacher where the model has one, else built from MODEL.CLIP.* once, on the model's
        device."""
        if self._teacher is None:
            alignment = getattr(self.model, "image_alignment", None)
            teacher = getattr(alignment, "teacher", None)
            if teacher is None:
                teacher = build_clip_teacher(self.cfg).to(self.model.device)
            self._teacher = teacher.eval()
        return self._teacher

    def _remember(self, names: Sequence[str], embeddings: torch.Tensor) -> None:
        """Cache ``embeddings`` of ``names`` as the most recently used; drop the least recently
        used beyond :attr:`cache_size`."""
        key = tuple(names)
        self._embeddings[key] = embeddings.detach().cpu()
        self._embeddings.move_to_end(key)
        while len(self._embeddings) > max(1, int(self.cache_size)):
            self._embeddings.popitem(last=False)

    # ------------------------------------------------------------------ inference
    def as_model_array(self, image: ImageLike, format: str = "BGR") -> np.ndarray:
        """``image`` as the model takes it: H x W x 3 uint8 in INPUT.FORMAT. ``image``: a path, a
        PIL image, or an H x W (grey), H x W x 3 or H x W x 4 (alpha dropped) uint8 array in
        ``format`` ("RGB" or "BGR"). Paths and PIL images are read by the project's image reader,
        :mod:`gridclip_d2.data.image_io` (EXIF orientation applied to files as Detectron2 does;
        16-bit and other high-bit-depth images scaled to 8 bits, not clipped). Raises
        FileNotFoundError for a missing file, ValueError for an unreadable one or an unusable
        array, TypeError for anything else."""
        if isinstance(image, (str, os.PathLike)):
            path = os.fspath(image)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"image: no such file: {path}")
            # an unreadable file: UnreadableImageError, a ValueError naming the path
            return read_image(path, format=self.input_format)
        if not isinstance(image, np.ndarray):  # a PIL image
            if not hasattr(image, "convert"):
                raise TypeError(
                    "image: expected a path, a numpy array or a PIL image, "
                    f"got {type(image).__name__}"
                )
            image, format = image_to_array(image, self.input_format), self.input_format
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

    @contextlib.contextmanager
    def decoding_for_display(self, display: bool = True) -> Iterator[None]:
        """Within it, the model decodes only the scores :meth:`display_filter` keeps (with
        ``display``; without, the model's own protocol threshold); restored on leaving.

        Decoding only the displayed scores gives the same boxes: NMS is greedy by score, so
        lower-scoring boxes never suppress higher ones, and the per-level top-k only gains room.
        The model keeps scores > its threshold, the display those >= ``score_thresh``: the model's
        threshold becomes the float32 just below ``score_thresh`` (never lower than its own)."""
        protocol_thresh = self.model.test_score_thresh
        if display:
            below = float(np.nextafter(np.float32(self.score_thresh), np.float32(-np.inf)))
            self.model.test_score_thresh = max(protocol_thresh, below)
        try:
            yield
        finally:
            self.model.test_score_thresh = protocol_thresh

    @torch.no_grad()
    def predict(
        self, images: Iterable[ImageLike], format: str = "BGR", display: bool = True
    ) -> List[Instances]:
        """Detections in each image (paths, PIL images, or H x W x 3 uint8 arrays in ``format``:
        "BGR" as OpenCV reads them, "RGB" as PIL / matplotlib do), ``batch_size`` at a time
        (images are read and converted one batch at a time).

        Returns: one ``Instances`` per image, on the CPU, in the image's own pixel coordinates:
        ``pred_boxes`` (XYXY), ``scores``, ``pred_classes`` (indices into :attr:`vocabulary`) and
        ``pred_class_names``; sorted by score. ``display=False``: the model's LVIS-protocol output.
        """
        names = self.model.vocabulary
        results = []
        images = iter(images)
        with self.decoding_for_display(display):
            while True:
                batch = [
                    self._inputs(self.as_model_array(image, format))
                    for image in itertools.islice(images, self.batch_size)
                ]
                if not batch:
                    break
                for output in self.model(batch):
                    instances = output["instances"].to("cpu")
                    instances = instances[instances.scores.argsort(descending=True)]
                    if display:
                        instances = self.display_filter(instances)
                    instances.pred_class_names = ClassNames(
                        names[int(c)] for c in instances.pred_classes
                    )
                    results.append(instances)
        return results

    def __call__(self, image: ImageLike, format: str = "BGR", display: bool = True) -> Instances:
        """Detections in one image (see :meth:`predict`)."""
        return self.predict([image], format=format, display=display)[0]
