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

import os

from detectron2.engine import default_argument_parser
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from .checkpointer import GridCLIPCheckpointer
from .ddp import set_cpu_threads_per_worker
from .default_setup import default_setup
from .setup import setup_cfg
from .trainer import Trainer

__all__ = ["argument_parser", "check_output_dir", "setup", "main"]


def argument_parser():
    """Detectron2's ``default_argument_parser`` (``--config-file``, ``--resume``, ``--eval-only``,
    ``--num-gpus``, ...) plus ``--overwrite``."""
    parser = default_argument_parser()
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="train afresh into an OUTPUT_DIR that holds an earlier run, replacing its checkpoints",
    )
    return parser


def check_output_dir(output_dir: str, resume: bool, overwrite: bool) -> None:
    """Training into a folder that holds a run (``model_final.pth`` or ``last_checkpoint``) would
    replace its checkpoints and mix its metrics: refused unless ``--resume`` (continue it) or
    ``--overwrite`` (start afresh there) says which the user means."""
    if resume or overwrite:
        return
    for name, what in (("model_final.pth", "a finished run"), ("last_checkpoint", "a started run")):
        path = os.path.join(output_dir, name)
        if os.path.exists(path):
            raise FileExistsError(
                f"OUTPUT_DIR {output_dir} holds {what} ({path}); training again would overwrite "
                "it. Pass --resume to continue that run, --overwrite to start afresh in the same "
                "folder, or set OUTPUT_DIR to another folder."
            )


def setup(args):
    """Config from ``args`` (file + trailing KEY VALUE overrides) set up by ``setup_cfg`` for
    training or ``--eval-only`` (data sets registered, vocabulary recorded, CPU fallback), then
    :func:`default_setup` (logging, output folder, config.yaml, seeds). Training refuses an
    OUTPUT_DIR that holds an earlier run unless ``--resume`` or ``--overwrite`` is given."""
    cfg = setup_cfg(args.config_file, args.opts, mode="eval" if args.eval_only else "train")
    if not args.eval_only:
        check_output_dir(cfg.OUTPUT_DIR, args.resume, getattr(args, "overwrite", False))
    default_setup(cfg, args)
    return cfg


def main(args):
    """Train (then evaluate) or, with ``--eval-only``, evaluate MODEL.WEIGHTS. Returns the
    evaluation results: ``{"bbox": {...}, "open_vocabulary": {...}}`` for one test set, keyed by
    test set name for several (on the main process)."""
    cfg = setup(args)
    set_cpu_threads_per_worker()

    if args.eval_only:
        if not cfg.MODEL.WEIGHTS:
            raise ValueError(
                "--eval-only needs the weights to evaluate: MODEL.WEIGHTS is empty (the head would "
                "be untrained); pass MODEL.WEIGHTS path/to/model_final.pth"
            )
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
