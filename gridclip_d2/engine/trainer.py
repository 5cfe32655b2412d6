"""GridCLIP's ``DefaultTrainer``: its data loaders, LVIS evaluation with the open-vocabulary
summary, the training-curves plot, and the CPU fall-backs (gloo DDP, no AMP on CPU).

Everything else (optimizer, LR schedule, periodic checkpoints, ETA / loss lines, metrics.json,
TensorBoard, resume) is Detectron2's ``DefaultTrainer``; checkpoints also hold the optimizer state.
"""
import logging
import os
from collections import OrderedDict
from typing import Optional

import torch
from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm

from ..data.mapper import GridCLIPDatasetMapper
from .ddp import patch_create_ddp_model
from .lvis_evaluator import LVIS_MAX_DETS, OpenVocabLVISEvaluator
from .ov_summary import format_open_vocabulary_summary, open_vocabulary_summary
from .plot_curves import PlotTrainingCurves

logger = logging.getLogger(__name__)

__all__ = ["Trainer", "adapt_cfg_to_hardware", "train_split_info"]


def adapt_cfg_to_hardware(cfg):
    """Return ``cfg`` (a clone when changed) that can run on this machine, logging each change.

    Without CUDA: MODEL.DEVICE "cuda*" becomes "cpu"; SOLVER.AMP.ENABLED becomes False on CPU
    (Detectron2's AMPTrainer asserts CUDA, and bf16 autocast on CPU was slower than fp32).
    """
    changes = {}
    device = cfg.MODEL.DEVICE
    if device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(f"MODEL.DEVICE is '{device}' but CUDA is not available: running on cpu")
        changes["MODEL.DEVICE"] = device = "cpu"
    if cfg.SOLVER.AMP.ENABLED and not device.startswith("cuda"):
        logger.warning("SOLVER.AMP.ENABLED is True but the model runs on CPU: AMP turned off")
        changes["SOLVER.AMP.ENABLED"] = False
    if not changes:
        return cfg
    cfg = cfg.clone()
    frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.merge_from_list([x for kv in changes.items() for x in kv])
    if frozen:
        cfg.freeze()
    return cfg


def train_split_info(cfg):
    """(name of the first training set, its ``novel_class_ids``) — ("", []) when there is none."""
    if not len(cfg.DATASETS.TRAIN):
        return "", []
    name = cfg.DATASETS.TRAIN[0]
    return name, list(MetadataCatalog.get(name).get("novel_class_ids", []))


def _share_buffers_of_rank0(model: torch.nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm running statistics), so that a multi-process
    evaluation scores the model rank 0 checkpoints. Detectron2 wraps DDP with
    ``broadcast_buffers=False``, so with trainable, unsynchronised BN each rank's statistics drift
    apart, and each rank would otherwise evaluate its share of the images with its own."""
    if comm.get_world_size() == 1:
        return
    for buf in model.buffers():
        torch.distributed.broadcast(buf.data, src=0)


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with GridCLIP's mapper, the LVIS evaluator and the curves plot.

    ``train()`` returns the evaluation results of the end of training (with the
    ``"open_vocabulary"`` summary per test set), on the main process.
    """

    def __init__(self, cfg):
        patch_create_ddp_model()  # before DefaultTrainer.__init__ wraps the model
        super().__init__(adapt_cfg_to_hardware(cfg))

    def build_hooks(self):
        hooks = super().build_hooks()
        if self.cfg.SOLVER.PLOT_CURVES and comm.is_main_process():
            hooks.append(PlotTrainingCurves(self.cfg.OUTPUT_DIR))  # after the PeriodicWriter
        return hooks

    def train(self):
        super().train()
        return getattr(self, "_last_eval_results", None)

    # Detectron2 v0.6's DefaultTrainer checkpoints the iteration and hook states but not its inner
    # SimpleTrainer's (the optimizer: SGD momentum); a resumed run would restart momentum from 0.
    # Later Detectron2 versions save it under the same "_trainer" key.
    def state_dict(self):
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        else:
            logger.warning("The checkpoint has no optimizer state: resuming with a fresh optimizer")

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
            overrides={"log_temperature": {"weight_decay": 0.0}, "logit_bias": {"weight_decay": 0.0}},
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
        return build_detection_train_loader(cfg, mapper=GridCLIPDatasetMapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(
            cfg, dataset_name, mapper=GridCLIPDatasetMapper(cfg, False)
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder: Optional[str] = None):
        """LVIS evaluation (top 300 detections per image) for data sets of evaluator_type "lvis";
        COCO evaluation for "coco"."""
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
        if evaluator_type == "lvis":
            _, novel = train_split_info(cfg)
            return OpenVocabLVISEvaluator(
                dataset_name,
                tasks=("bbox",),
                output_dir=output_folder,
                max_dets_per_image=LVIS_MAX_DETS,
                novel_class_ids=novel,
            )
        if evaluator_type == "coco":
            # use_fast_impl needs Detectron2's compiled extension; pycocotools' COCOeval does not.
            return COCOEvaluator(
                dataset_name, tasks=("bbox",), output_dir=output_folder, use_fast_impl=False
            )
        raise NotImplementedError(
            f"No evaluator for data set '{dataset_name}' (metadata evaluator_type="
            f"{evaluator_type!r}); register it with evaluator_type 'lvis' or 'coco'"
        )

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Detectron2's test loop, then the open-vocabulary summary of each test set: logged, and
        stored under ``results[...]["open_vocabulary"]``."""
        _share_buffers_of_rank0(model)
        results = super().test(cfg, model, evaluators)
        single = len(cfg.DATASETS.TEST) == 1
        per_dataset = OrderedDict({cfg.DATASETS.TEST[0]: results}) if single else results
        train_name, novel = train_split_info(cfg)
        for test_name, res in per_dataset.items():
            if not comm.is_main_process() or not res or "bbox" not in res:
                continue
            meta = MetadataCatalog.get(test_name)
            summary = open_vocabulary_summary(
                res["bbox"],
                num_classes=len(meta.thing_classes),
                novel_class_ids=novel,
                class_frequency=meta.get("class_frequency", None),
            )
            res["open_vocabulary"] = summary
            logger.info(format_open_vocabulary_summary(summary, test_name, train_name))
        return results
