"""Training curves (losses, learning rate, evaluation AP) plotted from Detectron2's metrics.json.

``metrics.json`` (written by Detectron2's ``JSONWriter``) holds one JSON object per line, each with
an ``iteration`` and the scalars logged at it (``total_loss``, ``loss_*``, ``lr``, ``bbox/AP``,
...).
A resumed run appends to the same file and may repeat iterations; the later line wins.
:class:`PlotTrainingCurves` saves the plot as ``training_curves.png`` next to it at the end of
training (SOLVER.PLOT_CURVES).
"""

import json
import logging
import os
from typing import Dict, List, Optional

from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

logger = logging.getLogger(__name__)

__all__ = ["load_metrics", "plot_training_curves", "PlotTrainingCurves", "CURVES_FILE"]

CURVES_FILE = "training_curves.png"


def load_metrics(metrics_json: str) -> Dict[str, List]:
    """Read metrics.json into ``{name: [(iteration, value), ...]}`` sorted by iteration.

    Lines that are not JSON objects with an ``iteration`` (e.g. a line cut short when a run was
    killed) are skipped with a warning naming the file and line.
    """
    if not PathManager.exists(metrics_json):
        raise FileNotFoundError(f"metrics file not found: {metrics_json}")
    by_iter: Dict[int, Dict[str, float]] = {}
    with PathManager.open(metrics_json) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                iteration = int(record["iteration"])
            except (ValueError, KeyError, TypeError):
                logger.warning(f"{metrics_json}:{lineno}: not a metrics record, skipped")
                continue
            values = {
                k: float(v)
                for k, v in record.items()
                if k != "iteration" and isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            by_iter.setdefault(iteration, {}).update(values)
    series: Dict[str, List] = {}
    for iteration in sorted(by_iter):
        for k, v in by_iter[iteration].items():
            series.setdefault(k, []).append((iteration, v))
    return series


def _loss_keys(series) -> List[str]:
    keys = sorted(k for k in series if k.startswith("loss_"))
    return (["total_loss"] if "total_loss" in series else []) + keys


def plot_training_curves(metrics_json: str, out_png: Optional[str] = None) -> str:
    """Plot losses, learning rate and (if any) evaluation AP from ``metrics_json``; return the PNG.

    Raises ValueError when the file holds no loss or learning-rate values.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    series = load_metrics(metrics_json)
    losses = _loss_keys(series)
    if not losses and "lr" not in series:
        raise ValueError(f"{metrics_json}: no 'total_loss', 'loss_*' or 'lr' values to plot")
    # "<task>/AP" or "<dataset>/<task>/AP"; the open-vocabulary summary repeats the bbox AP.
    ap_keys = sorted(k for k in series if k.endswith("/AP") and "open_vocabulary" not in k)
    panels = [("loss", losses), ("learning rate", ["lr"] if "lr" in series else [])]
    if ap_keys:
        panels.append(("evaluation AP", ap_keys))
    panels = [p for p in panels if p[1]]

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for k in keys:
            its, vals = zip(*series[k])
            ax.plot(its, vals, marker="o" if len(its) < 3 else None, label=k)
        ax.set_title(title)
        if title == "loss" and all(v > 0 for k in keys for _, v in series[k]):
            ax.set_yscale("log")  # early losses are often 10x the later ones
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if len(keys) > 1 or title != "learning rate":
            ax.legend(fontsize=8)
    fig.suptitle(os.path.basename(os.path.dirname(os.path.abspath(metrics_json))) or metrics_json)
    fig.tight_layout()
    out_png = out_png or os.path.join(os.path.dirname(metrics_json), CURVES_FILE)
    with PathManager.open(out_png, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return out_png


class PlotTrainingCurves(HookBase):
    """At the end of training (main process), plot ``output_dir/metrics.json`` to a PNG beside it.

    Must come after Detectron2's PeriodicWriter in the hook list, so the last values are written
    first. A plotting failure is logged, never raised: the trained model matters more.
    """

    def __init__(self, output_dir: str):
        self._metrics_json = os.path.join(output_dir, "metrics.json")

    def after_train(self):
        if not comm.is_main_process():
            return
        try:
            path = plot_training_curves(self._metrics_json)
            logger.info(f"Training curves saved to {path}")
        except (OSError, ValueError) as e:
            logger.warning(f"Training curves not plotted: {e}")
