"""GridCLIP's ``DefaultTrainer``: its data loaders, LVIS and open-vocabulary COCO evaluation with
the open-vocabulary summary, the training-curves plot, and the CPU fall-backs (gloo DDP, no AMP on
CPU).

Everything else (optimizer, LR schedule, periodic checkpoints, ETA / loss lines, metrics.json,
TensorBoard, resume) is Detectron2's ``DefaultTrainer``; checkpoints also hold the optimizer state.
"""

import contextlib
import logging
import os
import weakref
from collections import OrderedDict
from typing import List, Optional, Sequence, Tuple

import torch
from torch.nn.parallel import DistributedDataParallel

from detectron2.data import (
    DatasetFromList,
    MapDataset,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.data.build import _train_loader_from_config
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator
from detectron2.modeling import build_model
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm

from ..backports import TrainerStateBackport, patch_create_ddp_model
from ..data.mapper import GridCLIPDatasetMapper
from ..modeling.clip_text import clean_name
from ..modeling.text_classifier import vocabulary_text_embeddings
from ..vocabulary import names_mismatch, vocabulary_from_cfg
from .checkpointer import GridCLIPCheckpointer
from .default_setup import FILE_ONLY
from .hardware import adapt_cfg_to_hardware
from .loss_watch import LossWatch
from .lvis_evaluator import LVIS_MAX_DETS, OpenVocabLVISEvaluator
from .ov_coco_evaluator import (
    OV_COCO_EVALUATOR_TYPE,
    OpenVocabCOCOEvaluator,
    format_ov_coco_summary,
    ov_coco_summary,
)
from .ov_summary import format_open_vocabulary_summary, open_vocabulary_summary
from .plot_curves import PlotTrainingCurves

logger = logging.getLogger(__name__)

__all__ = [
    "Trainer",
    "adapt_cfg_to_hardware",
    "training_split",
    "test_novel_class_ids",
    "check_training_vocabulary",
]


def training_split(cfg) -> Tuple[str, List[str], List[str]]:
    """(training set name, the model's training vocabulary, its novel class names).

    The vocabulary is the config's (:func:`vocabulary_from_cfg`). Novel names come from
    DATASETS.GRIDCLIP.NOVEL_CLASSES when it names classes, else from the training set's metadata
    (``novel_class_ids``) when it is registered with the vocabulary's classes; else there are none.
    """
    names, _ = vocabulary_from_cfg(cfg)
    train_name = cfg.DATASETS.TRAIN[0] if len(cfg.DATASETS.TRAIN) else ""
    listed = [str(n) for n in cfg.DATASETS.GRIDCLIP.NOVEL_CLASSES]
    if listed and listed != ["auto"]:
        return train_name, names, [n for n in names if n in set(listed)]
    if train_name and train_name in MetadataCatalog.list():
        meta = MetadataCatalog.get(train_name)
        if list(meta.get("thing_classes", None) or []) == names:
            return train_name, names, [names[i] for i in meta.get("novel_class_ids", [])]
    return train_name, names, []


def test_novel_class_ids(cfg, test_classes: Sequence[str]) -> List[int]:
    """Contiguous ids of a test set's classes that had no training boxes: the training split's novel
    classes and classes outside the training vocabulary (compared by cleaned name, so
    "traffic_cone" and "traffic cone" are one class)."""
    _, names, novel = training_split(cfg)
    trained = {clean_name(n) for n in names} - {clean_name(n) for n in novel}
    return [i for i, n in enumerate(test_classes) if clean_name(n) not in trained]


def check_training_vocabulary(cfg) -> None:
    """Raise when DATASETS.TRAIN[0]'s classes are not the model's vocabulary, naming the
    difference."""
    if not len(cfg.DATASETS.TRAIN):
        return
    name = cfg.DATASETS.TRAIN[0]
    classes = MetadataCatalog.get(name).get("thing_classes", None)
    if not classes:
        raise ValueError(
            f"Training set {name!r} (DATASETS.TRAIN[0]) has no 'thing_classes': is it registered?"
        )
    names, source = vocabulary_from_cfg(cfg)
    problem = names_mismatch(
        classes,
        names,
        f"the classes of training set {name!r}",
        f"the model's vocabulary ({source})",
    )
    if problem:
        raise ValueError(
            f"Cannot train: {problem}. Training labels index the vocabulary, so they must be equal"
        )


def _share_buffers_of_rank0(model: torch.nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm running statistics), so that a multi-process
    evaluation scores the model rank 0 checkpoints. Detectron2 wraps DDP with
    ``broadcast_buffers=False``, so with trainable, unsynchronised BN each rank's statistics drift
    apart, and each rank would otherwise evaluate its share of the images with its own."""
    if comm.get_world_size() == 1:
        return
    for buf in model.buffers():
        torch.distributed.broadcast(buf.data, src=0)


class _TrainingImages(MapDataset):
    """Detectron2's ``MapDataset`` (the mapper skips an unreadable image and another one is drawn),
    ending in an error naming the data set and some of its files when no image is left to draw:
    Detectron2's own ends in "Sample larger than population"."""

    def __new__(cls, dataset, mapper, names: Sequence[str]):
        return object.__new__(cls)  # a list of dataset dicts (MapDataset's __new__ takes two)

    def __init__(self, dataset, mapper, names: Sequence[str]):
        super().__init__(dataset, mapper)
        self._names = tuple(names)

    def __getnewargs__(self):
        return self._dataset, self._map_func, self._names

    def __getitem__(self, idx):
        try:
            return super().__getitem__(idx)
        except ValueError:
            if self._fallback_candidates:
                raise
        files = [self._dataset[i].get("file_name", "?") for i in range(min(3, len(self._dataset)))]
        raise RuntimeError(
            f"No training image could be read: all {len(self._dataset)} images of "
            f"DATASETS.TRAIN {list(self._names)} failed (e.g. {', '.join(files)}; the warnings "
            "above say why). Check the image folder the data set was registered with (e.g. "
            "DATASETS.GRIDCLIP.TRAIN_IMAGES) and that its files are whole images"
        ) from None


class Trainer(TrainerStateBackport, DefaultTrainer):
    """``DefaultTrainer`` with GridCLIP's mapper, the LVIS evaluator and the curves plot.

    ``train()`` returns the evaluation results of the end of training (with the
    ``"open_vocabulary"`` summary per test set), on the main process. Checkpoints carry the
    optimizer state (:class:`~gridclip_d2.backports.TrainerStateBackport`).
    """

    def __init__(self, cfg):
        check_training_vocabulary(cfg)
        patch_create_ddp_model()  # before DefaultTrainer.__init__ wraps the model
        super().__init__(adapt_cfg_to_hardware(cfg))

    def build_hooks(self):
        # DefaultTrainer.__init__ made a DetectionCheckpointer just before calling this; the
        # checkpoint hook built below must get ours (safe reading, atomic writes, resume fallback).
        self.checkpointer = GridCLIPCheckpointer(
            self.checkpointer.model,
            self.cfg.OUTPUT_DIR,
            allow_partial=self.cfg.MODEL.ALLOW_PARTIAL_WEIGHTS,
            trainer=weakref.proxy(self),
        )
        hooks = super().build_hooks()
        hooks.insert(0, LossWatch())
        if self.cfg.SOLVER.PLOT_CURVES and comm.is_main_process():
            hooks.append(PlotTrainingCurves(self.cfg.OUTPUT_DIR))  # after the PeriodicWriter
        return hooks

    def train(self):
        super().train()
        return getattr(self, "_last_eval_results", None)

    @classmethod
    def build_model(cls, cfg):
        """Detectron2's ``build_model``; the model's layers go to log.txt only (``DefaultTrainer``
        prints them, hundreds of lines, to the terminal), the terminal gets their size."""
        model = build_model(cfg)
        total = sum(p.numel() for p in model.parameters())
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logger.info("Model:\n%s", model, extra=FILE_ONLY)
        logger.info(
            "Model %s: %.1fM parameters, %.1fM trained (its layers are in log.txt)",
            cfg.MODEL.META_ARCHITECTURE,
            total / 1e6,
            trained / 1e6,
        )
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        """Detectron2's SGD, with no weight decay on the head's learned temperature and logit bias:
        decay would pull the temperature towards 1 and the bias towards a 50% prior."""
        params = get_default_optimizer_params(
            model,
            base_lr=cfg.SOLVER.BASE_LR,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
            overrides={
                "log_temperature": {"weight_decay": 0.0},
                "logit_bias": {"weight_decay": 0.0},
            },
        )
        return maybe_add_gradient_clipping(cfg, torch.optim.SGD)(
            params,
            lr=cfg.SOLVER.BASE_LR,
            momentum=cfg.SOLVER.MOMENTUM,
            nesterov=cfg.SOLVER.NESTEROV,
            weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        )

    @classmethod
    def build_train_loader(cls, cfg):
        """Detectron2's loader of ``cfg`` with GridCLIP's mapper; unreadable images are skipped,
        and when none can be read the error names the data set (:class:`_TrainingImages`)."""
        kwargs = _train_loader_from_config(cfg, mapper=GridCLIPDatasetMapper(cfg, True))
        dataset = DatasetFromList(kwargs.pop("dataset"), copy=False)
        kwargs["dataset"] = _TrainingImages(dataset, kwargs.pop("mapper"), cfg.DATASETS.TRAIN)
        return build_detection_train_loader(mapper=None, **kwargs)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(
            cfg, dataset_name, mapper=GridCLIPDatasetMapper(cfg, False)
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder: Optional[str] = None):
        """LVIS evaluation (top 300 detections per image) for data sets of evaluator_type "lvis";
        COCO evaluation for "coco"; COCO evaluation with AP50 on novel / base / all classes for
        "coco_ov" (open-vocabulary COCO)."""
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
        if evaluator_type == "lvis":
            novel = test_novel_class_ids(cfg, MetadataCatalog.get(dataset_name).thing_classes)
            return OpenVocabLVISEvaluator(
                dataset_name,
                tasks=("bbox",),
                output_dir=output_folder,
                max_dets_per_image=LVIS_MAX_DETS,
                novel_class_ids=novel,
                class_groups=MetadataCatalog.get(dataset_name).get("class_groups", None),
            )
        if evaluator_type == OV_COCO_EVALUATOR_TYPE:
            return OpenVocabCOCOEvaluator(dataset_name, tasks=("bbox",), output_dir=output_folder)
        if evaluator_type == "coco":
            # use_fast_impl needs Detectron2's compiled extension; pycocotools' COCOeval does not.
            return COCOEvaluator(
                dataset_name, tasks=("bbox",), output_dir=output_folder, use_fast_impl=False
            )
        raise NotImplementedError(
            f"No evaluator for data set '{dataset_name}' (metadata evaluator_type="
            f"{evaluator_type!r}); register it with evaluator_type 'lvis', 'coco' or "
            f"'{OV_COCO_EVALUATOR_TYPE}'"
        )

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Detectron2's test loop over DATASETS.TEST, each set evaluated with its own classes: when
        they differ from the model's vocabulary, the model takes them for that set (rows of the
        TEXT_EMBEDDINGS .npy when its sidecar lists exactly them, else embedded with the same CLIP
        weights and prompts) and gets its own back afterwards. Then the open-vocabulary summary of
        each set: logged, and stored under ``results[...]["open_vocabulary"]``."""
        if evaluators is not None and len(evaluators) != len(cfg.DATASETS.TEST):
            raise ValueError(f"{len(evaluators)} evaluators for {len(cfg.DATASETS.TEST)} test sets")
        _share_buffers_of_rank0(model)
        inner = model.module if isinstance(model, DistributedDataParallel) else model
        results = OrderedDict()
        for idx, test_name in enumerate(cfg.DATASETS.TEST):
            one = cfg.clone()
            one.defrost()
            one.DATASETS.TEST = (test_name,)
            classes = list(MetadataCatalog.get(test_name).thing_classes)
            with _vocabulary_of(cfg, inner, classes, test_name):
                res = super().test(
                    one, model, [evaluators[idx]] if evaluators is not None else None
                )
            results[test_name] = res
            if not comm.is_main_process() or not res or "bbox" not in res:
                continue
            meta = MetadataCatalog.get(test_name)
            if meta.get("evaluator_type", None) == OV_COCO_EVALUATOR_TYPE:
                # the benchmark's AP50 on its novel / base / all classes
                summary = ov_coco_summary(res["bbox"], meta.class_groups)
                res["open_vocabulary"] = summary
                logger.info(format_ov_coco_summary(summary, test_name, training_split(cfg)[0]))
                continue
            summary = open_vocabulary_summary(
                res["bbox"],
                num_classes=len(classes),
                novel_class_ids=test_novel_class_ids(cfg, classes),
                class_frequency=meta.get("class_frequency", None),
                class_groups=meta.get("class_groups", None),
            )
            res["open_vocabulary"] = summary
            logger.info(format_open_vocabulary_summary(summary, test_name, training_split(cfg)[0]))
        if len(results) == 1:
            return next(iter(results.values()))
        return results


@contextlib.contextmanager
def _vocabulary_of(cfg, model, classes: List[str], test_name: str):
    """Give ``model`` the test set's ``classes`` for the duration of the block (nothing to do when
    they are its vocabulary already)."""
    own = list(model.vocabulary or [])
    if classes == own:
        yield
        return
    embeddings = model.head.classifier.embeddings.clone()
    shared = len({clean_name(c) for c in classes} & {clean_name(c) for c in own})
    logger.info(
        "Evaluating %s with its own %d classes (%d of them in the model's %d-class vocabulary)",
        test_name,
        len(classes),
        shared,
        len(own),
    )
    # the rows of TEXT_EMBEDDINGS when its sidecar lists exactly these classes, else embedded with
    # the model's CLIP weights and prompts
    rows = vocabulary_text_embeddings(
        cfg,
        classes,
        cfg.MODEL.GRIDCLIP.TEXT_EMBEDDINGS,
        only_if_named=True,
        names_source=f"the classes of {test_name!r}",
        encode=model.encode_vocabulary,
    )
    model.set_vocabulary(names=classes, embeddings=rows)
    try:
        yield
    finally:
        model.set_vocabulary(names=own or None, embeddings=embeddings)
