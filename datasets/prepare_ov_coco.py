#!/usr/bin/env python
"""Write the open-vocabulary COCO jsons: 48 base categories with boxes, 17 novel ones without.

    python datasets/prepare_ov_coco.py \
        [--train $DETECTRON2_DATASETS/coco/annotations/instances_train2017.json] \
        [--val $DETECTRON2_DATASETS/coco/annotations/instances_val2017.json] \
        [--out-train $DETECTRON2_DATASETS/coco/annotations/ov_coco_train_base.json] \
        [--out-val $DETECTRON2_DATASETS/coco/annotations/ov_coco_val.json]

``--out-train``: COCO 2017 train with only the base categories' boxes (registered as
``coco_ov_train_base``); ``--out-val``: COCO 2017 val with the boxes of the 65 categories
(``coco_ov_val``). Both keep the 65 categories with COCO's ids, so class ids line up (the split and
its source: ``gridclip_d2.data.coco_ov``). Both are written atomically; the sources are only read.
``$DETECTRON2_DATASETS`` defaults to ``datasets``.
"""

import gridclip_d2.library_warnings  # noqa: F401  (first: quiets the libraries' warnings)

import argparse
import json
import logging
import os
import sys

from gridclip_d2.atomic_write import atomic_json_dump
from gridclip_d2.data.coco_ov import (
    OV_COCO_CLASSES,
    OV_COCO_NOVEL_CLASSES,
    OV_COCO_SPLITS,
    make_ov_coco_json,
    ov_coco_category_ids,
)

logger = logging.getLogger("prepare_ov_coco")


def _write_json(obj, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_json_dump(obj, path)


def main(argv=None) -> int:
    root = os.getenv("DETECTRON2_DATASETS", "datasets")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for split, (name, source, out, _) in OV_COCO_SPLITS.items():
        parser.add_argument(
            f"--{split}",
            default=os.path.join(root, source),
            help=f"COCO 2017 {split} instances json (read only)",
        )
        parser.add_argument(
            f"--out-{split}", default=os.path.join(root, out), help=f"json of {name}"
        )
    args = parser.parse_args(argv)

    sources = {split: getattr(args, split) for split in OV_COCO_SPLITS}
    outputs = {split: getattr(args, f"out_{split}") for split in OV_COCO_SPLITS}
    for split, src in sources.items():
        if not os.path.isfile(src):
            parser.error(
                f"--{split} '{src}' does not exist (download COCO 2017 as datasets/README.md says)"
            )
    for split, out in outputs.items():
        if os.path.abspath(out) in {os.path.abspath(s) for s in sources.values()}:
            parser.error(f"--out-{split} '{out}' is a source json; it would be overwritten")

    novel_ids = {
        i for n, i in zip(OV_COCO_CLASSES, ov_coco_category_ids()) if n in OV_COCO_NOVEL_CLASSES
    }
    made = {}  # both are made before either is written: a bad source leaves no half of the pair
    for split, src in sources.items():
        logger.info(f"Reading {src} ...")
        try:
            with open(src, encoding="utf-8") as f:
                data = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
            parser.error(f"--{split} '{src}' is not a valid json file: {e}")
        try:
            made[split] = make_ov_coco_json(data, split, source=f"--{split} '{src}'")
        except ValueError as e:
            parser.error(str(e))
        ov = made[split]
        removed = len(data["annotations"]) - len(ov["annotations"])
        novel = sum(a["category_id"] in novel_ids for a in data["annotations"])
        novel = novel if split == "train" else 0  # the val json keeps the novel boxes
        logger.info(
            f"{OV_COCO_SPLITS[split][0]}: kept {len(ov['annotations'])} of "
            f"{len(data['annotations'])} boxes, removed {removed} ({novel} of novel categories, "
            f"{removed - novel} of the 15 COCO categories outside the split); "
            f"{len(ov['images'])} of {len(data['images'])} images, "
            f"{len(ov['categories'])} categories"
        )
        del data
    for split, ov in made.items():
        _write_json(ov, outputs[split])
        logger.info(f"Wrote {outputs[split]}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
