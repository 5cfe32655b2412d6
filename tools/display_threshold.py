#!/usr/bin/env python
"""Choose the score threshold of what is shown (MODEL.GRIDCLIP.DISPLAY.SCORE_THRESH) from a labelled
set: precision, recall and F1 of the displayed detections at each threshold.

    python tools/display_threshold.py --config-file configs/GridCLIP_synthetic.yaml \
        --opts MODEL.WEIGHTS output/GridCLIP_synthetic/model_final.pth \
        DATASETS.TEST "('synthetic_val',)"    # choose on val, never on the reported split

The model runs through :class:`gridclip_d2.GridCLIPPredictor` with the class-agnostic display NMS
(MODEL.GRIDCLIP.DISPLAY.NMS_THRESH) on the first DATASETS.TEST set, named with that set's classes. A
displayed detection is correct when it overlaps a not-yet-matched ground-truth box of its class
by IoU >= --iou (greedy by score, as COCO-style matching does). Prints a markdown table, the
best F1, the range of thresholds whose F1 is within --within points of it, and the middle of that
range, which it recommends (and returns): the best F1's own threshold moves between CPUs, whose
float rounding differs, when neighbouring rows are nearly equal.
"""

import gridclip_d2.library_warnings  # noqa: F401  (first: quiets the libraries' warnings)

import argparse
import logging

import numpy as np
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, pairwise_iou
from detectron2.utils.logger import setup_logger

from gridclip_d2 import GridCLIPPredictor
from gridclip_d2.engine import setup_cfg

logger = logging.getLogger("gridclip_d2.display_threshold")


def match(instances, annotations, iou_thresh):
    """Per detection (in score order): 1 if it matches an unmatched ground-truth box of its
    class."""
    gt_boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations]
    gt_classes = torch.tensor([a["category_id"] for a in annotations], dtype=torch.long)
    correct = np.zeros(len(instances), dtype=bool)
    if not annotations or not len(instances):
        return correct
    ious = pairwise_iou(instances.pred_boxes, Boxes(torch.tensor(gt_boxes, dtype=torch.float32)))
    taken = torch.zeros(len(annotations), dtype=torch.bool)
    for i in range(len(instances)):
        candidates = (gt_classes == instances.pred_classes[i]) & ~taken & (ious[i] >= iou_thresh)
        if candidates.any():
            j = int(torch.where(candidates, ious[i], torch.full_like(ious[i], -1)).argmax())
            taken[j] = True
            correct[i] = True
    return correct


def threshold_table(scores, correct, num_gt, thresholds):
    """Rows (threshold, shown, precision, recall, F1)."""
    rows = []
    for t in thresholds:
        shown = scores >= t
        tp = int(correct[shown].sum())
        precision = tp / max(int(shown.sum()), 1)
        recall = tp / max(num_gt, 1)
        f1 = 2 * precision * recall / max(precision + recall, 1e-12)
        rows.append((float(t), int(shown.sum()), precision, recall, f1))
    return rows


def choose_threshold(rows, within):
    """(best row, low, high, chosen): the thresholds around the best F1 whose F1 is within
    ``within`` of it (a contiguous run of the table), and the table's threshold nearest the middle
    of that run. The argmax alone jumps between near-equal rows when float rounding differs
    (another CPU); the middle of the plateau does not."""
    i = max(range(len(rows)), key=lambda k: rows[k][4])
    lo = hi = i
    while lo > 0 and rows[lo - 1][4] >= rows[i][4] - within:
        lo -= 1
    while hi < len(rows) - 1 and rows[hi + 1][4] >= rows[i][4] - within:
        hi += 1
    middle = (rows[lo][0] + rows[hi][0]) / 2
    chosen = min(rows[lo : hi + 1], key=lambda row: (abs(row[0] - middle), row[0]))[0]
    return rows[i], rows[lo][0], rows[hi][0], chosen


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument(
        "--dataset", default="", help="a registered labelled set (default: DATASETS.TEST[0])"
    )
    parser.add_argument("--iou", type=float, default=0.5, help="IoU for a detection to be correct")
    parser.add_argument(
        "--within",
        type=float,
        default=1.0,
        help="F1 points below the best that still count as equally good (default 1)",
    )
    parser.add_argument(
        "--max-images", type=int, default=0, help="use at most this many images (0: all)"
    )
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config KEY VALUE pairs"
    )
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="gridclip_d2")
    cfg = setup_cfg(args.config_file, args.opts, mode="eval")
    name = args.dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "")
    if not name or name not in DatasetCatalog.list():
        raise SystemExit(
            f"--dataset: {name or '(DATASETS.TEST is empty)'} is not a registered data set"
        )
    dicts = DatasetCatalog.get(name)
    if args.max_images > 0:
        dicts = dicts[: args.max_images]
    classes = MetadataCatalog.get(name).thing_classes
    predictor = GridCLIPPredictor(cfg, classes, score_thresh=0.0)
    scores, correct, num_gt = [], [], 0
    for d in dicts:
        instances = predictor(d["file_name"])
        annotations = [a for a in d.get("annotations", []) if not a.get("iscrowd", 0)]
        num_gt += len(annotations)
        scores.append(instances.scores.numpy())
        correct.append(match(instances, annotations, args.iou))
    scores, correct = np.concatenate(scores), np.concatenate(correct)
    rows = threshold_table(scores, correct, num_gt, np.round(np.arange(0.05, 0.96, 0.05), 2))
    print(
        f"Displayed detections on {name} ({len(dicts)} images, {num_gt} objects, "
        "class-agnostic NMS "
        f"at IoU {predictor.nms_thresh}, correct = right class at IoU >= {args.iou}):\n"
    )
    print("| score threshold | shown | precision | recall | F1 |\n|---|---|---|---|---|")
    for t, shown, p, r, f1 in rows:
        print(f"| {t:.2f} | {shown} | {100 * p:.1f} | {100 * r:.1f} | {100 * f1:.1f} |")
    best, low, high, chosen = choose_threshold(rows, args.within / 100)
    print(
        f"\nBest F1 {100 * best[4]:.1f} at score threshold {best[0]:.2f}; F1 within "
        f"{args.within:g} point(s) of it from {low:.2f} to {high:.2f}. The middle of that range "
        f"moves least between machines: MODEL.GRIDCLIP.DISPLAY.SCORE_THRESH {chosen:.2f}"
    )
    return chosen


if __name__ == "__main__":
    main()
