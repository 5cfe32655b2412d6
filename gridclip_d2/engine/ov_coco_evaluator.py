"""Open-vocabulary COCO evaluation: Detectron2's ``COCOEvaluator`` plus box AP50 on the novel, base
and all categories, the numbers the open-vocabulary COCO benchmark reports.

pycocotools' ``COCOeval`` runs once, as in Detectron2 (its table and per-category AP are logged as
usual); AP50 per category and per group is read from its accumulated ``eval["precision"]`` at IoU
0.5, area "all" and the last maxDets (100), the entries ``COCOeval.stats[1]`` (AP50) averages over
all categories. Results, in the "bbox" dict beside Detectron2's:

    "AP50-<class name>" per category, "AP50-novel", "AP50-base", "AP50-all" (= "AP50")

The groups are the test set's metadata ``class_groups`` "novel" / "base" (the benchmark's fixed
split: ``gridclip_d2.data.coco_ov``). :func:`ov_coco_summary` and :func:`format_ov_coco_summary`
give the open-vocabulary summary that ``Trainer.test`` stores and logs:
``AP50 novel N | AP50 base B | AP50 all A``.
"""

import itertools
import logging
import math
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
from tabulate import tabulate

from detectron2.evaluation import COCOEvaluator
from detectron2.utils.logger import create_small_table

from ..data.coco_ov import OV_COCO_EVALUATOR_TYPE

__all__ = [
    "OV_COCO_EVALUATOR_TYPE",
    "OpenVocabCOCOEvaluator",
    "mean_ap50_over_categories",
    "ov_coco_summary",
    "format_ov_coco_summary",
]

logger = logging.getLogger(__name__)

_GROUPS = ("novel", "base", "all")


def mean_ap50_over_categories(coco_eval, category_ids: Sequence[int]) -> float:
    """Box AP50 (IoU 0.5, area "all", the last maxDets) over the given json category ids, in
    percent; NaN when none of them has ground truth.

    Hand-written: ``COCOeval.summarize`` only averages over all its categories. This is its
    ``_summarize(ap=1, iouThr=.5, areaRng="all", maxDets=maxDets[-1])`` on a subset of categories:
    precision entries of -1 (no ground truth) are left out.
    """
    params = coco_eval.params
    precision = coco_eval.eval["precision"]  # T x R x K x A x M (IoU thr, recall, cat, area, dets)
    t = int(np.flatnonzero(np.isclose(params.iouThrs, 0.5))[0])
    a = params.areaRngLbl.index("all")
    k_of = {cat: k for k, cat in enumerate(params.catIds)}
    ks = [k_of[c] for c in category_ids if c in k_of]
    s = precision[t, :, ks, a, -1]  # R x len(ks)
    s = s[s > -1]
    return float(np.mean(s) * 100) if s.size else float("nan")


class OpenVocabCOCOEvaluator(COCOEvaluator):
    """``COCOEvaluator`` (bbox, pycocotools' official ``COCOeval``) that also reports AP50 per
    category and on the novel / base / all categories.

    Args:
        dataset_name, tasks, distributed, output_dir: as ``COCOEvaluator``.
        novel_class_ids: contiguous ids of the novel classes; None: the test set's metadata
            ``class_groups["novel"]``.
        use_fast_impl: ``COCOEvaluator``'s; off by default: the fast one needs Detectron2's
            compiled extension and is unofficial, and the benchmark's numbers are official ones.
    """

    def __init__(
        self,
        dataset_name: str,
        tasks=("bbox",),
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        novel_class_ids: Optional[Sequence[int]] = None,
        use_fast_impl: bool = False,
    ):
        super().__init__(dataset_name, tasks, distributed, output_dir, use_fast_impl=use_fast_impl)
        classes = list(self._metadata.get("thing_classes", None) or [])
        mapping = self._metadata.get("thing_dataset_id_to_contiguous_id", None) or {}
        if sorted(mapping.values()) != list(range(len(classes))) or not classes:
            raise ValueError(
                f"Data set '{dataset_name}': its metadata needs thing_classes and a "
                "thing_dataset_id_to_contiguous_id onto 0..C-1 for the open-vocabulary COCO "
                "evaluation"
            )
        if self._do_evaluation and sorted(self._coco_api.getCatIds()) != sorted(mapping):
            raise ValueError(
                f"{self._metadata.json_file}: its categories are not the {len(classes)} classes of "
                f"data set '{dataset_name}' (thing_dataset_id_to_contiguous_id); for coco_ov_val "
                "make it with `python datasets/prepare_ov_coco.py`"
            )
        if novel_class_ids is None:
            groups = self._metadata.get("class_groups", None) or {}
            if "novel" not in groups:
                raise ValueError(
                    f"Data set '{dataset_name}' has no class_groups['novel'] in its metadata: the "
                    "open-vocabulary COCO evaluation needs its novel classes (or pass "
                    "novel_class_ids)"
                )
            novel_class_ids = groups["novel"]
        bad = [i for i in novel_class_ids if not 0 <= int(i) < len(classes)]
        if bad:
            raise ValueError(
                f"novel_class_ids {bad[:5]} are outside the {len(classes)} classes of the test set "
                f"'{dataset_name}'"
            )
        json_id = {v: k for k, v in mapping.items()}
        novel = {int(i) for i in novel_class_ids}
        # group -> json category ids, and (class name, json id) in contiguous order
        self._group_ids = {
            "novel": [json_id[i] for i in sorted(novel)],
            "base": [json_id[i] for i in range(len(classes)) if i not in novel],
            "all": [json_id[i] for i in range(len(classes))],
        }
        self._classes = [(name, json_id[i]) for i, name in enumerate(classes)]

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        results = super()._derive_coco_results(coco_eval, iou_type, class_names=class_names)
        if iou_type != "bbox":
            return results
        if coco_eval is None:  # no detections at all
            results.update({f"AP50-{g}": float("nan") for g in _GROUPS})
            return results
        per_class = [
            (name, mean_ap50_over_categories(coco_eval, [cat])) for name, cat in self._classes
        ]
        n_cols = min(6, len(per_class) * 2)
        flat = list(itertools.chain(*per_class))
        table = tabulate(
            itertools.zip_longest(*[flat[i::n_cols] for i in range(n_cols)]),
            tablefmt="pipe",
            floatfmt=".3f",
            headers=["category", "AP50"] * (n_cols // 2),
            numalign="left",
        )
        logger.info("Per-category bbox AP50: \n" + table)
        groups = {
            f"AP50-{g}": mean_ap50_over_categories(coco_eval, self._group_ids[g]) for g in _GROUPS
        }
        logger.info(
            "Open-vocabulary bbox AP50 ({} novel, {} base classes): \n".format(
                len(self._group_ids["novel"]), len(self._group_ids["base"])
            )
            + create_small_table(groups)
        )
        results.update({f"AP50-{name}": ap for name, ap in per_class})
        results.update(groups)
        return results


def ov_coco_summary(bbox: Mapping[str, float], class_groups: Mapping[str, Sequence[int]]):
    """The open-vocabulary summary of one OV-COCO test set from its evaluator's "bbox" metrics:
    ``{"AP50-novel", "AP50-base", "AP50-all", "num_novel_classes", "num_base_classes"}`` (floats;
    NaN where a metric is missing)."""
    if "AP50-all" not in bbox:
        raise KeyError(
            f"bbox results have no 'AP50-all' (keys: {sorted(bbox)[:10]}...): not the output of "
            "OpenVocabCOCOEvaluator"
        )
    summary: Dict[str, float] = {f"AP50-{g}": float(bbox.get(f"AP50-{g}", "nan")) for g in _GROUPS}
    summary["num_novel_classes"] = float(len(class_groups.get("novel", ())))
    summary["num_base_classes"] = float(len(class_groups.get("base", ())))
    return summary


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f}"


def format_ov_coco_summary(
    summary: Mapping[str, float], test_name: str, train_name: str = ""
) -> str:
    """Two lines for the log: the split, then ``AP50 novel N | AP50 base B | AP50 all A``."""
    trained = f"trained on {train_name}: " if train_name else ""
    split = (
        f"{trained}{int(summary['num_base_classes'])} base + "
        f"{int(summary['num_novel_classes'])} novel classes"
    )
    line = " | ".join(f"AP50 {g} {_fmt(summary[f'AP50-{g}'])}" for g in _GROUPS)
    return f"Open-vocabulary summary on {test_name} ({split}):\n  {line}"
