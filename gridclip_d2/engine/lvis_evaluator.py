"""LVIS evaluation with the open-vocabulary split: Detectron2's ``LVISEvaluator`` plus AP on the
novel and base classes.

Detectron2's evaluator reports AP, APr, APc, APf (lvis-api's frequency groups of the *test* json).
An open-vocabulary model is judged on the classes held out from training, which are named by the
training set's metadata (``novel_class_ids``, contiguous ids): on LVIS' base split they are exactly
the rare classes, on a user's own split they need not be. :class:`OpenVocabLVISEvaluator` runs
lvis-api once per task, as Detectron2 does, and adds ``APnovel`` / ``APbase`` averaged over those
classes the same way lvis-api averages a frequency group.
"""

import copy
import itertools
import json
import logging
import os
from typing import Dict, Optional, Sequence

import numpy as np

from detectron2.evaluation import LVISEvaluator
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

from ..backports import lvis_numpy_aliases

logger = logging.getLogger(__name__)

__all__ = ["OpenVocabLVISEvaluator", "LVIS_MAX_DETS", "mean_ap_over_categories"]

# lvis-api's protocol keeps the top 300 detections per image.
LVIS_MAX_DETS = 300
_METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"]


def mean_ap_over_categories(lvis_eval, category_ids: Sequence[int]) -> float:
    """AP (IoU 0.50:0.95, area "all") over the given json category ids, in percent.

    Hand-written: lvis-api only averages over its fixed frequency groups. This mirrors
    ``LVISEval._summarize('ap', freq_group_idx=...)`` with an arbitrary category subset: precision
    entries of -1 (no ground truth) are left out; NaN when no category has ground truth.
    """
    precision = lvis_eval.eval["precision"]  # T x R x K x A (IoU thr, recall, category, area)
    k_of = {cat: k for k, cat in enumerate(lvis_eval.params.cat_ids)}
    ks = [k_of[c] for c in category_ids if c in k_of]
    area = lvis_eval.params.area_rng_lbl.index("all")
    s = precision[:, :, ks, area]
    s = s[s > -1]
    return float(np.mean(s) * 100) if s.size else float("nan")


class OpenVocabLVISEvaluator(LVISEvaluator):
    """``LVISEvaluator`` that also reports ``APnovel`` and ``APbase`` for the given novel classes.

    Args:
        dataset_name, tasks, distributed, output_dir, max_dets_per_image: as ``LVISEvaluator``.
        novel_class_ids: contiguous ids (in the test set's class order) of the classes held out from
            training; empty = no split (``APnovel`` / ``APbase`` are then not reported).
        class_groups: group name -> contiguous ids; each group's AP is reported as ``AP-<name>``
            (the synthetic set's "base", "novel-compositional", "novel-concept": metadata
            ``class_groups``).
    """

    def __init__(
        self,
        dataset_name: str,
        tasks=("bbox",),
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        max_dets_per_image: int = LVIS_MAX_DETS,
        novel_class_ids: Sequence[int] = (),
        class_groups: Optional[Dict[str, Sequence[int]]] = None,
    ):
        super().__init__(
            dataset_name, tasks, distributed, output_dir, max_dets_per_image=max_dets_per_image
        )
        num_classes = len(self._metadata.get("thing_classes", []))
        bad = [i for i in novel_class_ids if not 0 <= int(i) < num_classes]
        if bad:
            raise ValueError(
                f"novel_class_ids {bad[:5]} are outside the {num_classes} classes of the test set "
                f"'{dataset_name}' (train and test sets must share one class list)"
            )
        self._novel_class_ids = sorted(int(i) for i in novel_class_ids)
        self._class_groups = {
            str(g): sorted(int(i) for i in ids) for g, ids in (class_groups or {}).items()
        }
        bad = [
            g for g, ids in self._class_groups.items() if any(not 0 <= i < num_classes for i in ids)
        ]
        if bad:
            raise ValueError(
                f"class_groups {bad} of the test set '{dataset_name}' hold ids outside its "
                f"{num_classes} classes"
            )
        # contiguous id -> json category id (built once: it is looked up for every detection)
        mapping = self._metadata.get("thing_dataset_id_to_contiguous_id", None)
        self._json_ids = (
            {v: k for k, v in mapping.items()}
            if mapping
            else {
                i: i + 1 for i in range(num_classes)
            }  # LVIS: json ids are the 1-based contiguous ids
        )

    def _json_category_id(self, contiguous_id: int) -> int:
        return self._json_ids[contiguous_id]

    def _eval_predictions(self, predictions):
        # As LVISEvaluator._eval_predictions, with lvis-api called here so that its per-category
        # precision is at hand for the novel / base averages.
        logger.info("Preparing results in the LVIS format ...")
        lvis_results = list(itertools.chain(*[x["instances"] for x in predictions]))
        tasks = self._tasks or self._tasks_from_predictions(lvis_results)
        num_classes = len(self._metadata.get("thing_classes", []))
        for result in lvis_results:
            result["category_id"] = self._json_category_id(result["category_id"])

        if self._output_dir:
            file_path = os.path.join(self._output_dir, "lvis_instances_results.json")
            logger.info("Saving results to {}".format(file_path))
            with PathManager.open(file_path, "w") as f:
                f.write(json.dumps(lvis_results))

        if not self._do_evaluation:
            logger.info("Annotations are not available for evaluation.")
            return

        novel = [self._json_category_id(i) for i in self._novel_class_ids]
        novel_set = set(novel)
        base = [self._json_category_id(i) for i in range(num_classes)]
        base = [c for c in base if c not in novel_set]
        for task in sorted(tasks):
            self._results[task] = self._evaluate_task(lvis_results, task, novel, base)

    def _evaluate_task(self, lvis_results, task, novel, base) -> Dict[str, float]:
        if len(lvis_results) == 0:
            logger.warning("No predictions from the model!")
            return {metric: float("nan") for metric in _METRICS}
        from lvis import LVISEval, LVISResults

        if task == "segm":
            # As Detectron2: without "bbox", lvis-api uses the mask area for small/medium/large.
            lvis_results = copy.deepcopy(lvis_results)
            for c in lvis_results:
                c.pop("bbox", None)
        logger.info(f"Evaluating with max detections per image = {self._max_dets_per_image}")
        dt = LVISResults(self._lvis_api, lvis_results, max_dets=self._max_dets_per_image)
        lvis_eval = LVISEval(self._lvis_api, dt, task)
        with lvis_numpy_aliases():
            lvis_eval.run()
        lvis_eval.print_results()
        res = lvis_eval.get_results()
        results = {metric: float(res[metric] * 100) for metric in _METRICS}
        if novel:
            results["APnovel"] = mean_ap_over_categories(lvis_eval, novel)
            results["APbase"] = mean_ap_over_categories(lvis_eval, base)
        for group, ids in self._class_groups.items():
            json_ids = [self._json_category_id(i) for i in ids]
            results[f"AP-{group}"] = mean_ap_over_categories(lvis_eval, json_ids)
        logger.info("Evaluation results for {}: \n".format(task) + create_small_table(results))
        return results
