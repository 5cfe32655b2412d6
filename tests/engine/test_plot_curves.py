"""Training curves from a metrics.json as Detectron2's JSONWriter writes it."""

import json

import numpy as np
import pytest
from PIL import Image

from detectron2.utils.events import EventStorage, JSONWriter

from gridclip_d2.engine import PlotTrainingCurves, load_metrics, plot_training_curves


def _write_metrics(path, start, stop, lr=0.01):
    writer = JSONWriter(str(path), window_size=1)
    with EventStorage(start) as storage:
        for it in range(start, stop):
            storage.iter = it
            storage.put_scalars(
                total_loss=3.0 - 0.1 * it,
                loss_cls=2.0 - 0.1 * it,
                loss_box_reg=1.0,
                loss_image_align=0.5 / (it + 1),
                lr=lr * (it + 1),
            )
            writer.write()
        storage.iter = stop  # as TrainerBase.after_train, where the final evaluation is stored
        storage.put_scalars(**{"bbox/AP": 10.0 + stop}, smoothing_hint=False)
        writer.write()
    writer.close()


def test_load_metrics_resumed_run_and_bad_line(tmp_path):
    path = tmp_path / "metrics.json"
    _write_metrics(path, 0, 6)
    with open(path, "a") as f:
        f.write('{"iteration": 7, "total_lo')  # a line cut short by a killed run
        f.write("\n")
    _write_metrics(path, 4, 8, lr=0.02)  # resumed from iteration 4: later lines win
    series = load_metrics(str(path))
    assert [it for it, _ in series["total_loss"]] == list(range(8))
    assert dict(series["lr"])[3] == pytest.approx(0.04) and dict(series["lr"])[5] == pytest.approx(
        0.12
    )
    assert dict(series["bbox/AP"]) == {6: 16.0, 8: 18.0}


def test_plot_png_next_to_metrics(tmp_path):
    path = tmp_path / "metrics.json"
    _write_metrics(path, 0, 10)
    png = plot_training_curves(str(path))
    assert png == str(tmp_path / "training_curves.png")
    img = np.asarray(Image.open(png).convert("RGB"))
    assert img.shape[0] == 400 and img.shape[1] == 3 * 550  # loss, lr and AP panels
    assert img.std() > 10  # something was drawn


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        plot_training_curves(str(tmp_path / "nothing.json"))
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"iteration": 1, "data_time": 0.1}) + "\n")
    with pytest.raises(ValueError, match="metrics.json: no 'total_loss'"):
        plot_training_curves(str(path))
    PlotTrainingCurves(str(tmp_path)).after_train()  # logged, not raised
    assert not (tmp_path / "training_curves.png").exists()
