"""What ``train_net.py`` runs, importable from anywhere (``from gridclip_d2.engine import
train_main``): a script that registers its own data set needs no repository on ``sys.path``.

    from detectron2.engine import default_argument_parser
    from gridclip_d2.data import register_lvis_format
    from gridclip_d2.engine import train_main

    register_lvis_format("mydata_train", "train.json", "images/", novel_classes=["zebra"])
    args = default_argument_parser().parse_args(
        ["--config-file", CFG, "DATASETS.TRAIN", "('mydata_train',)"]
    )
    results = train_main.main(args)  # one process: spawned workers would not see the registration
"""

from detectron2.engine import default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from .checkpointer import GridCLIPCheckpointer
from .ddp import set_cpu_threads_per_worker
from .setup import setup_cfg
from .trainer import Trainer

__all__ = ["setup", "main"]


def setup(args):
    """Config from ``args`` (file + trailing KEY VALUE overrides) set up by ``setup_cfg`` for
    training or ``--eval-only`` (data sets registered, vocabulary recorded, CPU fallback), then
    Detectron2's ``default_setup`` (logging, output folder, config.yaml)."""
    cfg = setup_cfg(args.config_file, args.opts, mode="eval" if args.eval_only else "train")
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="gridclip_d2")
    return cfg


def main(args):
    """Train (then evaluate) or, with ``--eval-only``, evaluate MODEL.WEIGHTS. Returns the
    evaluation results: ``{"bbox": {...}, "open_vocabulary": {...}}`` for one test set, keyed by
    test set name for several (on the main process)."""
    cfg = setup(args)
    set_cpu_threads_per_worker()

    if args.eval_only:
        model = Trainer.build_model(cfg)
        GridCLIPCheckpointer(
            model, save_dir=cfg.OUTPUT_DIR, allow_partial=cfg.MODEL.ALLOW_PARTIAL_WEIGHTS
        ).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()
