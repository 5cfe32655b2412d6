"""Runs that go wrong: divergence is stopped and named, an exploding loss is warned about, bad
training images are skipped (named) instead of ending the run, and wrong-architecture weights end
``train_net.py`` with an error naming the file."""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.utils.events import EventStorage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import train_net  # noqa: E402
from gridclip_d2.data import register_lvis_format  # noqa: E402
from gridclip_d2.data.mapper import GridCLIPDatasetMapper  # noqa: E402
from gridclip_d2.engine.loss_watch import LossWatch  # noqa: E402

CONFIG = os.path.join(REPO, "configs", "GridCLIP_synthetic.yaml")
TINY = [
    "SOLVER.IMS_PER_BATCH",
    "2",
    "SOLVER.MAX_ITER",
    "6",
    "SOLVER.WARMUP_ITERS",
    "2",
    "SOLVER.STEPS",
    "(100,)",
    "SOLVER.CHECKPOINT_PERIOD",
    "1",
    "INPUT.MIN_SIZE_TRAIN",
    "(128,)",
    "INPUT.MAX_SIZE_TRAIN",
    "128",
    "INPUT.MIN_SIZE_TEST",
    "128",
    "INPUT.MAX_SIZE_TEST",
    "128",
]


def _args(out, *opts, flags=()):
    return train_net.default_argument_parser().parse_args(
        ["--config-file", CONFIG, *flags, *TINY, "OUTPUT_DIR", str(out), *opts]
    )


@pytest.mark.slow
@pytest.mark.parametrize("lr", ["1e6", "1e3"])
def test_divergence_stops_naming_the_outputs_and_keeps_good_checkpoints(tmp_path, lr):
    with pytest.raises(
        FloatingPointError,
        match=r"diverged at iteration \d+: the head's .*NaN or inf. Lower SOLVER.BASE_LR",
    ):
        train_net.main(_args(tmp_path, "SOLVER.BASE_LR", lr, "DATASETS.TEST", "()"))
    # Checkpoints are saved every iteration here: each one that exists holds finite weights.
    saved = [f for f in os.listdir(tmp_path) if f.endswith(".pth")]
    for f in saved:
        state = torch.load(tmp_path / f, map_location="cpu", weights_only=True)["model"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), f
    if saved:
        assert (tmp_path / "last_checkpoint").read_text() in saved


class _Trainer:
    def __init__(self, storage):
        self.storage, self.iter = storage, 0


def test_loss_watch_warns_when_the_loss_explodes(caplog):
    losses = [3.0, 2.8, 2.9, 2.7, 2.6, 2.5, 40.0, 400.0, 4.8e4, 5e4, 2.0]
    with EventStorage() as storage, caplog.at_level(logging.WARNING, logger="gridclip_d2"):
        hook = LossWatch()
        hook.trainer = _Trainer(storage)
        for it, value in enumerate(losses):
            storage.iter = hook.trainer.iter = it
            storage.put_scalar("total_loss", value)
            hook.after_step()
        hook.after_train()
    warnings = [r.getMessage() for r in caplog.records if "LOSS EXPLODED" in r.getMessage()]
    assert (
        len(warnings) == 2
    )  # once when it happens (then at most every 20 iterations), once at the end
    assert "total_loss 400 at iteration 7 is 154x its early level 2.6" in warnings[0]
    assert "worst total_loss 5e+04 at iteration 9" in warnings[1]


def _user_set_with_bad_images(root):
    """8 images, one truncated JPEG and one whose file size disagrees with the json."""
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    for i in range(8):
        img = np.full((96, 128, 3), 200, np.uint8)
        img[20:60, 30:70] = (220, 20, 20)
        path = root / "images" / f"img{i}.jpg"
        Image.fromarray(img).save(path)
        images.append({"id": i + 1, "file_name": f"img{i}.jpg", "height": 96, "width": 128})
        anns.append(
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": 1,
                "bbox": [30, 20, 40, 40],
                "area": 1600,
            }
        )
    data = (root / "images" / "img3.jpg").read_bytes()
    (root / "images" / "img3.jpg").write_bytes(data[: len(data) // 3])  # truncated
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(
        root / "images" / "img5.jpg"
    )  # wrong size
    json_file = root / "set.json"
    json_file.write_text(
        json.dumps(
            {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "red box"}]}
        )
    )
    return str(json_file), str(root / "images")


@pytest.mark.slow
def test_bad_training_images_are_skipped_not_fatal(tmp_path, caplog):
    json_file, images = _user_set_with_bad_images(tmp_path / "data")
    name = f"hardening_bad_images_{os.path.basename(str(tmp_path))}"
    register_lvis_format(name, json_file, images)
    with caplog.at_level(logging.WARNING, logger="gridclip_d2"):
        train_net.main(
            _args(
                tmp_path / "out",
                "DATASETS.TRAIN",
                f"('{name}',)",
                "DATASETS.TEST",
                "()",
                "SOLVER.MAX_ITER",
                "8",
                "SOLVER.CHECKPOINT_PERIOD",
                "100",
            )
        )
    assert (tmp_path / "out" / "model_final.pth").is_file()
    # the run's log (written by every process, data-loading workers included)
    log = (tmp_path / "out" / "log.txt").read_text()
    skipped = " ".join(line for line in log.splitlines() if "Skipping a training image" in line)
    assert "img3.jpg" in skipped and "img5.jpg" in skipped

    # At test time the same images are errors naming them: an evaluation scores every image.
    cfg = train_net.setup(_args(tmp_path / "cfg"))
    mapper = GridCLIPDatasetMapper(cfg, False)
    record = {
        "file_name": os.path.join(images, "img3.jpg"),
        "height": 96,
        "width": 128,
        "image_id": 4,
    }
    with pytest.raises(OSError, match="img3.jpg"):
        mapper(record)


@pytest.mark.slow
def test_weights_of_another_architecture_end_the_run_naming_the_file(tmp_path):
    import torchvision

    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    cmd = [
        sys.executable,
        os.path.join(REPO, "train_net.py"),
        "--config-file",
        CONFIG,
        "--eval-only",
        *TINY,
        "OUTPUT_DIR",
        str(tmp_path / "out"),
        "MODEL.WEIGHTS",
        str(weights),
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert f"Checkpoint {weights} fills 0 of the model's" in proc.stderr
    assert "MODEL.ALLOW_PARTIAL_WEIGHTS" in proc.stderr
