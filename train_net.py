#!/usr/bin/env python
"""GridCLIP training and evaluation with Detectron2.

    python train_net.py --config-file configs/GridCLIP_synthetic.yaml       # train + evaluate
    python train_net.py --config-file CFG --num-gpus 8                      # 8 workers (NCCL)
    python train_net.py --config-file CFG --num-gpus 2 MODEL.DEVICE cpu     # 2 CPU workers (gloo)
    python train_net.py --config-file CFG --resume                          # continue a run
    python train_net.py --config-file CFG --eval-only MODEL.WEIGHTS out/model_final.pth
    python train_net.py --config-file CFG --num-machines 2 --machine-rank 0 \
        --dist-url tcp://host:port                                          # on each machine

A user's own LVIS-format data, with no code:
    python train_net.py --config-file CFG DATASETS.GRIDCLIP.NAME mydata \
        DATASETS.GRIDCLIP.TRAIN_JSON train.json DATASETS.GRIDCLIP.TRAIN_IMAGES images/ \
        DATASETS.GRIDCLIP.TEST_JSON val.json DATASETS.GRIDCLIP.TEST_IMAGES images/

or from a script (single process; spawned workers would not see the script's registration):
    from gridclip_d2.data import register_lvis_format
    import train_net
    register_lvis_format("mydata_train", "train.json", "images/")
    args = train_net.default_argument_parser().parse_args(["--config-file", CFG, ...])
    results = train_net.main(args)

``main(args)`` returns the evaluation results: ``{"bbox": {...}, "open_vocabulary": {...}}`` for one
test set, keyed by test set name for several.
"""
import os

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from gridclip_d2 import add_gridclip_config
from gridclip_d2.data import register_from_cfg
from gridclip_d2.engine import Trainer, adapt_cfg_to_hardware, set_cpu_threads_per_worker

__all__ = ["Trainer", "setup", "main", "default_argument_parser"]


def setup(args):
    """Config from ``args`` (file + trailing KEY VALUE overrides), data sets registered, logging and
    output folder set up (Detectron2's ``default_setup``)."""
    if args.config_file and not os.path.isfile(args.config_file):
        raise FileNotFoundError(f"--config-file: no such file: {args.config_file}")
    cfg = get_cfg()
    add_gridclip_config(cfg)
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts or [])
    register_from_cfg(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="gridclip_d2")
    return adapt_cfg_to_hardware(cfg)


def main(args):
    cfg = setup(args)
    set_cpu_threads_per_worker()

    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
