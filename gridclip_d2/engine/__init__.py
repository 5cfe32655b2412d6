"""Training and evaluation: GridCLIP's Detectron2 trainer, LVIS open-vocabulary evaluation and
summary, training-curves plot, and multi-process training on CPUs."""
from .ddp import available_cpus, patch_create_ddp_model, set_cpu_threads_per_worker
from .lvis_evaluator import LVIS_MAX_DETS, OpenVocabLVISEvaluator
from .ov_summary import format_open_vocabulary_summary, open_vocabulary_summary
from .plot_curves import PlotTrainingCurves, load_metrics, plot_training_curves
from .trainer import Trainer, adapt_cfg_to_hardware, train_split_info

__all__ = [
    "available_cpus",
    "patch_create_ddp_model",
    "set_cpu_threads_per_worker",
    "LVIS_MAX_DETS",
    "OpenVocabLVISEvaluator",
    "format_open_vocabulary_summary",
    "open_vocabulary_summary",
    "PlotTrainingCurves",
    "load_metrics",
    "plot_training_curves",
    "Trainer",
    "adapt_cfg_to_hardware",
    "train_split_info",
]
