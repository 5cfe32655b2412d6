#!/usr/bin/env python
"""Write the LVIS v1 open-vocabulary base split and the per-category counts.

    python datasets/prepare_lvis_base.py \
        [--src $DETECTRON2_DATASETS/lvis/lvis_v1_train.json] \
        [--out $DETECTRON2_DATASETS/lvis/lvis_v1_train_base.json] \
        [--cat-info $DETECTRON2_DATASETS/lvis/lvis_v1_train_cat_info.json]

``--out``: LVIS v1 train without the annotations of rare categories (they are the novel classes at
test time), all 1203 categories kept so class ids line up (registered as ``lvis_v1_train_base``).
``--cat-info``: id, name, frequency, image_count, instance_count of every category of ``--src``,
counted from its annotations (the ``image_count_per_class`` metadata of the LVIS v1 data sets).
Both are written atomically; ``--src`` is only read. ``$DETECTRON2_DATASETS`` defaults to
``datasets``.
"""

import gridclip_d2.library_warnings  # noqa: F401  (first: quiets the libraries' warnings)

import argparse
import json
import logging
import os
import sys

from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES

from gridclip_d2.atomic_write import atomic_json_dump
from gridclip_d2.data.lvis_v1 import BASE_JSON, CAT_INFO_JSON, category_info, make_base_split

logger = logging.getLogger("prepare_lvis_base")


def _write_json(obj, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_json_dump(obj, path)


def main(argv=None) -> int:
    root = os.getenv("DETECTRON2_DATASETS", "datasets")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--src",
        default=os.path.join(root, "lvis/lvis_v1_train.json"),
        help="LVIS v1 train json (read only)",
    )
    parser.add_argument("--out", default=os.path.join(root, BASE_JSON), help="base-split json")
    parser.add_argument(
        "--cat-info",
        default=os.path.join(root, CAT_INFO_JSON),
        help="per-category counts of --src ('' to skip)",
    )
    args = parser.parse_args(argv)

    if not os.path.isfile(args.src):
        parser.error(f"--src '{args.src}' does not exist (download it as datasets/README.md says)")
    for opt, path in (("--out", args.out), ("--cat-info", args.cat_info)):
        if path and os.path.abspath(path) == os.path.abspath(args.src):
            parser.error(f"{opt} '{path}' is the source json; it would be overwritten")
    logger.info(f"Reading {args.src} ...")
    with open(args.src) as f:
        data = json.load(f)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            parser.error(f"--src '{args.src}' is not an LVIS-format json: no '{key}' list")

    expected = {c["id"]: c["name"] for c in LVIS_CATEGORIES}
    found = {c.get("id"): c.get("name") for c in data["categories"]}
    if found != expected:
        logger.warning(
            f"{args.src}: categories differ from LVIS v1's {len(expected)} "
            f"({len(found)} found); lvis_v1_train_base expects LVIS v1's"
        )

    try:
        base = make_base_split(data, source=args.src)
    except ValueError as e:
        parser.error(str(e))
    rare = sum(c["frequency"] == "r" for c in data["categories"])
    removed = len(data["annotations"]) - len(base["annotations"])
    logger.info(
        f"Removed {removed} of {len(data['annotations'])} annotations "
        f"({rare} rare categories); kept {len(base['categories'])} categories, "
        f"{len(base['images'])} images"
    )
    _write_json(base, args.out)
    logger.info(f"Wrote {args.out}")
    if args.cat_info:
        _write_json(category_info(data), args.cat_info)
        logger.info(f"Wrote {args.cat_info}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
