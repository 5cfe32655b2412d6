"""The open-vocabulary summary printed after evaluation and stored in the results.

From one test set's bbox metrics (``OpenVocabLVISEvaluator``'s dict) and the training set's
metadata it gives AP, APr, APc, APf, AP on the novel / base classes, and the split used:

    {"AP": .., "APr": .., "APc": .., "APf": .., "APnovel": .., "APbase": ..,
     "num_base_classes": .., "num_novel_classes": .., "novel_is_rare": 0.0 or 1.0}

plus ``AP-<group>`` for each of the test set's ``class_groups`` (the synthetic set's "base",
"novel-compositional", "novel-concept"), printed as one more line
``AP base B | AP novel-compositional C | AP novel-concept K``.

Every value is a float (Detectron2's EvalHook writes results as scalars); a metric lvis-api could
not compute (no ground truth in the group, reported as -100) is NaN here.
"""

import math
from typing import Dict, Mapping, Optional, Sequence

__all__ = ["open_vocabulary_summary", "format_open_vocabulary_summary"]


def _metric(bbox: Mapping[str, float], key: str) -> float:
    value = bbox.get(key, float("nan"))
    value = float(value)
    return float("nan") if value < 0 else value  # lvis-api: -1 (x100) = no ground truth


def open_vocabulary_summary(
    bbox: Mapping[str, float],
    num_classes: int,
    novel_class_ids: Sequence[int] = (),
    class_frequency: Optional[Sequence[Optional[str]]] = None,
    class_groups: Optional[Mapping[str, Sequence[int]]] = None,
) -> Dict[str, float]:
    """Summary of one test set.

    Args:
        bbox: the evaluator's "bbox" metrics (AP, APr, APc, APf; APnovel and APbase with a split).
        num_classes: number of classes of the test set.
        novel_class_ids: contiguous ids held out from training (training set metadata).
        class_frequency: 'r'/'c'/'f' per class (metadata ``class_frequency``), to tell whether the
            novel classes are exactly the rare ones (then APr is the novel AP: LVIS' base split).
        class_groups: group name -> contiguous ids (metadata ``class_groups``); their APs come from
            ``bbox["AP-<group>"]``.
    """
    if "AP" not in bbox:
        raise KeyError(f"bbox results have no 'AP' (keys: {sorted(bbox)})")
    novel = sorted(set(int(i) for i in novel_class_ids))
    if any(not 0 <= i < num_classes for i in novel):
        raise ValueError(f"novel_class_ids {novel[:5]}... outside the {num_classes} test classes")
    rare = {i for i, f in enumerate(class_frequency or []) if f == "r"}
    summary = {k: _metric(bbox, k) for k in ("AP", "APr", "APc", "APf")}
    summary["APnovel"] = _metric(bbox, "APnovel") if novel else float("nan")
    summary["APbase"] = _metric(bbox, "APbase") if novel else summary["AP"]
    summary["num_base_classes"] = float(num_classes - len(novel))
    summary["num_novel_classes"] = float(len(novel))
    summary["novel_is_rare"] = float(bool(novel) and set(novel) == rare)
    for group in class_groups or {}:
        summary[f"AP-{group}"] = _metric(bbox, f"AP-{group}")
    return summary


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f}"


def format_open_vocabulary_summary(
    summary: Mapping[str, float], test_name: str, train_name: str = ""
) -> str:
    """A few lines for the log: the split used, then AP / APr / APc / APf and novel / base AP."""
    n_base, n_novel = int(summary["num_base_classes"]), int(summary["num_novel_classes"])
    trained = f"trained on {train_name}: " if train_name else ""
    if n_novel:
        split = f"{trained}{n_base} base + {n_novel} novel classes"
        if summary.get("novel_is_rare"):
            split += " (novel = rare)"
    else:
        split = f"{trained}all {n_base} classes seen in training (no novel split)"
    apr = "APr" + (" (novel)" if summary.get("novel_is_rare") else "")
    line = " | ".join(
        [
            f"AP {_fmt(summary['AP'])}",
            f"{apr} {_fmt(summary['APr'])}",
            f"APc {_fmt(summary['APc'])}",
            f"APf {_fmt(summary['APf'])}",
        ]
    )
    lines = [f"Open-vocabulary summary on {test_name} ({split}):", "  " + line]
    if n_novel:
        lines.append(f"  AP novel {_fmt(summary['APnovel'])} | AP base {_fmt(summary['APbase'])}")
    groups = [k[len("AP-") :] for k in summary if k.startswith("AP-")]  # in the test set's order
    if groups:
        lines.append("  " + " | ".join(f"AP {g} {_fmt(summary['AP-' + g])}" for g in groups))
    return "\n".join(lines)
