#!/usr/bin/env python
"""GridCLIP training and evaluation with Detectron2.

    python train_net.py --config-file configs/GridCLIP_synthetic.yaml       # train + evaluate
    python train_net.py --config-file CFG --num-gpus 8                      # 8 workers (NCCL)
    python train_net.py --config-file CFG --num-gpus 2 MODEL.DEVICE cpu     # 2 CPU workers (gloo)
    python train_net.py --config-file CFG --resume                          # continue a run
    python train_net.py --config-file CFG --eval-only MODEL.WEIGHTS out/model_final.pth
    python train_net.py --config-file CFG --num-machines 2 --machine-rank 0 \
        --dist-url tcp://host:port                                          # on each machine

A user's own LVIS-format data, with no code (NOVEL_CLASSES: an open-vocabulary split, names or
"['auto']" = the categories without training boxes; AP novel / AP base are then reported):
    python train_net.py --config-file CFG DATASETS.GRIDCLIP.NAME mydata \
        DATASETS.GRIDCLIP.TRAIN_JSON train.json DATASETS.GRIDCLIP.TRAIN_IMAGES images/ \
        DATASETS.GRIDCLIP.TEST_JSON val.json DATASETS.GRIDCLIP.TEST_IMAGES images/ \
        DATASETS.GRIDCLIP.NOVEL_CLASSES "['zebra', 'kite']"

or from a script, with ``gridclip_d2.engine.train_main`` (see its docstring; no sys.path setup).

``main(args)`` returns the evaluation results: ``{"bbox": {...}, "open_vocabulary": {...}}`` for one
test set, keyed by test set name for several.
"""

import gridclip_d2.library_warnings  # noqa: F401  (first: quiets the libraries' warnings)

from gridclip_d2.engine import Trainer, launch  # Detectron2's, closing each worker's process group
from gridclip_d2.engine.train_main import argument_parser as default_argument_parser
from gridclip_d2.engine.train_main import main, setup

__all__ = ["Trainer", "setup", "main", "default_argument_parser"]


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
