#!/usr/bin/env python
"""Pretrain a small CLIP on the synthetic image-caption pairs and report its zero-shot accuracy.

    python tools/pretrain_clip.py                                  # -> datasets/synthetic_clip/
    python tools/pretrain_clip.py --output out/clip --steps 800    # another run
    python tools/pretrain_clip.py --output out/clip --resume       # continue an interrupted run
    python tools/pretrain_clip.py --overwrite                      # afresh over finished weights
    python tools/pretrain_clip.py --eval-only datasets/synthetic_clip/RNtiny96_synthetic.pt

The default run writes what ``MODEL.CLIP.WEIGHTS synthetic`` loads (it is made on first use when
missing): ``<output>/RNtiny96_synthetic.pt``, a state dict in OpenAI's layout
(``clip.model.build_model`` accepts it; ``MODEL.CLIP.WEIGHTS <path>`` loads it like ``RN50.pt``),
and ``<output>/zero_shot.json``. The zero-shot table (single-object crops of synthetic_val, base
and novel categories, one prompt and the prompt ensemble) is printed at the end.
"""

import gridclip_d2.library_warnings  # noqa: F401  (first: quiets the libraries' warnings)

import argparse
import dataclasses
import json
import logging
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gridclip_d2.pretrain.contrastive import (  # noqa: E402
    PretrainConfig,
    final_weights_name,
    pretrain_clip,
)
from gridclip_d2.pretrain.synthetic_clip import synthetic_clip_path  # noqa: E402
from gridclip_d2.pretrain.zero_shot import format_report, zero_shot_report  # noqa: E402

logger = logging.getLogger("pretrain_clip")


def main(argv=None) -> int:
    defaults = PretrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output",
        default=os.path.dirname(synthetic_clip_path()),
        help="output folder (default: where MODEL.CLIP.WEIGHTS synthetic is cached)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from <output>/last_checkpoint.pth"
    )
    parser.add_argument(
        "--eval-only",
        metavar="WEIGHTS",
        default="",
        help="only report the zero-shot accuracy of a CLIP checkpoint",
    )
    parser.add_argument("--arch", default=defaults.arch, help="architecture name in CLIP_ARCHS")
    for field in (
        "steps",
        "batch_size",
        "lr",
        "weight_decay",
        "warmup",
        "seed",
        "num_pairs",
        "checkpoint_period",
    ):
        default = getattr(defaults, field)
        parser.add_argument("--" + field.replace("_", "-"), type=type(default), default=default)
    parser.add_argument(
        "--no-match-same-objects",
        dest="match_same_objects",
        action="store_false",
        help="CLIP's loss as it is: only an image's own caption matches it (default: captions "
        "that name the same objects match too, UniCL's targets)",
    )
    parser.add_argument(
        "--num-threads", type=int, default=0, help="torch threads (0: torch's default)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="pretrain afresh into an --output that already holds finished weights",
    )
    args = parser.parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)

    if args.eval_only:
        if not os.path.isfile(args.eval_only):
            parser.error(f"--eval-only: no such file: {args.eval_only}")
        report = zero_shot_report(args.eval_only, args.arch)
    else:
        cfg = PretrainConfig(
            **{f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainConfig)}
        )
        done = os.path.join(args.output, final_weights_name(cfg.arch))
        if os.path.isfile(done) and not (args.resume or args.overwrite):
            parser.error(
                f"{done} exists (a finished pretraining); pass --overwrite to pretrain afresh "
                "over it, --resume to continue that run, or choose another --output"
            )
        final = pretrain_clip(args.output, cfg, resume=args.resume)
        with open(os.path.join(args.output, "zero_shot.json")) as f:
            report = json.load(f)
        logger.info(f"Weights: {final} (MODEL.CLIP.WEIGHTS {final} MODEL.CLIP.ARCH {args.arch})")
    print(format_report(report))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    sys.exit(main())
