"""Training and evaluation: GridCLIP's Detectron2 trainer, LVIS open-vocabulary evaluation and
summary, training-curves plot, and multi-process training on CPUs."""

from . import train_main  # noqa: E402  (setup / main of train_net.py)
from .ddp import available_cpus, launch, patch_create_ddp_model, set_cpu_threads_per_worker
from .hardware import adapt_cfg_to_hardware
from .lvis_evaluator import LVIS_MAX_DETS, OpenVocabLVISEvaluator
from .ov_summary import format_open_vocabulary_summary, open_vocabulary_summary
from .plot_curves import PlotTrainingCurves, load_metrics, plot_training_curves
from .setup import SETUP_MODES, setup_cfg
from .trainer import Trainer, check_training_vocabulary, test_novel_class_ids, training_split

__all__ = [
    "available_cpus",
    "launch",
    "patch_create_ddp_model",
    "set_cpu_threads_per_worker",
    "LVIS_MAX_DETS",
    "OpenVocabLVISEvaluator",
    "format_open_vocabulary_summary",
    "open_vocabulary_summary",
    "PlotTrainingCurves",
    "load_metrics",
    "plot_training_curves",
    "SETUP_MODES",
    "setup_cfg",
    "Trainer",
    "adapt_cfg_to_hardware",
    "check_training_vocabulary",
    "test_novel_class_ids",
    "training_split",
    "train_main",
]
