"""Inputs whose error used to point elsewhere than the fault (issue 20, "Misleading messages"): each
now ends in an error naming the option, file or field at fault and saying what to do."""

import importlib.util
import json
import os
import sys
import tempfile
import traceback

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import train_net  # noqa: E402
from gridclip_d2.modeling.clip_weights import load_clip_state_dict  # noqa: E402

CONFIG = os.path.join(REPO, "configs", "GridCLIP_synthetic.yaml")
TINY = [
    "SOLVER.IMS_PER_BATCH",
    "2",
    "SOLVER.MAX_ITER",
    "4",
    "SOLVER.WARMUP_ITERS",
    "2",
    "SOLVER.STEPS",
    "(3,)",
    "INPUT.MIN_SIZE_TRAIN",
    "(128,)",
    "INPUT.MAX_SIZE_TRAIN",
    "128",
    "INPUT.MIN_SIZE_TEST",
    "128",
    "INPUT.MAX_SIZE_TEST",
    "128",
]


def _tool(name):
    spec = importlib.util.spec_from_file_location(
        f"clear_errors_{name}", os.path.join(REPO, "tools", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train(out_dir, *opts):
    argv = ["--config-file", CONFIG, *TINY, "OUTPUT_DIR", str(out_dir), *opts]
    return train_net.main(train_net.default_argument_parser().parse_args(argv))


def _user_data(root, categories, image_bytes=None):
    """A user's LVIS-format training json of two 128 x 96 images (each with one box of the first
    category), and the DATASETS.GRIDCLIP options that register it under the name ``root.name``."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    images, anns = [], []
    for i in range(2):
        path = root / "images" / f"img{i}.png"
        if image_bytes is None:
            Image.new("RGB", (128, 96), (200, 20, 20)).save(path)
        else:
            path.write_bytes(image_bytes)
        images.append({"id": i + 1, "file_name": path.name, "height": 96, "width": 128})
        anns.append(
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": categories[0]["id"],
                "bbox": [10, 10, 40, 40],
                "area": 1600,
            }
        )
    json_file = root / "train.json"
    json_file.write_text(
        json.dumps({"images": images, "annotations": anns, "categories": categories})
    )
    return json_file, [
        "DATASETS.GRIDCLIP.NAME",
        root.name,
        "DATASETS.GRIDCLIP.TRAIN_JSON",
        str(json_file),
        "DATASETS.GRIDCLIP.TRAIN_IMAGES",
        str(root / "images"),
        "DATASETS.GRIDCLIP.TEST_JSON",
        str(json_file),
        "DATASETS.GRIDCLIP.TEST_IMAGES",
        str(root / "images"),
    ]


def test_zero_batch_size_names_the_key(tmp_path):
    with pytest.raises(ValueError) as e:
        _train(tmp_path / "out", "SOLVER.IMS_PER_BATCH", "0")
    assert "SOLVER.IMS_PER_BATCH is 0: it must be a positive multiple of the number of workers" in (
        str(e.value)
    )


def test_two_categories_of_one_name_name_the_json(tmp_path):
    cats = [{"id": 1, "name": "box"}, {"id": 2, "name": "disc"}, {"id": 3, "name": "box"}]
    json_file, opts = _user_data(tmp_path / "clear_errors_dup", cats)
    with pytest.raises(ValueError) as e:
        _train(tmp_path / "out", *opts)
    message = str(e.value)
    assert str(json_file) in message and "'box' (ids [1, 3])" in message
    assert "CLASS_NAMES" not in message


def test_no_readable_training_image_names_the_data_set_and_files(tmp_path):
    cats = [{"id": 1, "name": "box"}]
    _, opts = _user_data(tmp_path / "clear_errors_unread", cats, image_bytes=b"not an image")
    with pytest.raises(RuntimeError) as e:
        _train(tmp_path / "out", *opts)
    message = str(e.value)
    assert "No training image could be read" in message
    assert "clear_errors_unread_train" in message
    assert str(tmp_path / "clear_errors_unread" / "images" / "img0.png") in message


def _can_write(folder) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


@pytest.fixture
def unwritable_folder(tmp_path):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if not _can_write(folder):
            yield str(folder)
        elif not _can_write("/sys"):  # root ignores permission bits; sysfs takes no new files
            yield "/sys"
        else:
            pytest.skip("no folder on this machine refuses a new file")
    finally:
        folder.chmod(0o755)


def test_export_into_an_unwritable_folder_names_it_before_the_model_loads(
    unwritable_folder, synthetic_weights, monkeypatch
):
    export_model = _tool("export_model")
    monkeypatch.setattr(export_model, "setup_cfg", None)  # never reached
    argv = [
        "--config-file",
        CONFIG,
        "--sample-image",
        os.path.join(REPO, "README.md"),
        "--output",
        unwritable_folder,
        "--opts",
        "MODEL.WEIGHTS",
        synthetic_weights,
    ]
    with pytest.raises(SystemExit) as e:
        export_model.main(argv)
    assert f"--output: cannot write to {unwritable_folder}" in str(e.value)
    # and a save that fails later (the folder changed during the export) names its file
    path = os.path.join(unwritable_folder, "model.ts.new")
    with pytest.raises(OSError) as e:
        export_model.write_file(
            path, lambda p: torch.jit.save(torch.jit.script(torch.nn.Identity()), p)
        )
    assert f"--output: cannot write {path}" in str(e.value)


class _RunsCode:
    """Pickled as a call of ``open(marker, "w")``: a loader that runs it creates the marker."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _bad_checkpoint(path, kind, marker):
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        torch.save({"model": {"w": torch.zeros(1000)}, "step": 2}, path)
        path.write_bytes(path.read_bytes()[:600])
    elif kind == "hostile":
        torch.save({"model": _RunsCode(str(marker)), "step": 2}, path)
    else:  # a tensor, not a checkpoint
        torch.save(torch.zeros(3), path)


def _shown(excinfo) -> str:
    """Everything a user sees of the error: its traceback with any chained exceptions."""
    return "".join(traceback.format_exception(excinfo.value))


@pytest.mark.parametrize("kind", ["empty", "truncated", "hostile", "tensor"])
def test_pretrain_resume_from_a_bad_checkpoint_names_it(tmp_path, kind):
    pretrain_clip = _tool("pretrain_clip")
    out = tmp_path / "clip"
    out.mkdir()
    path = out / "last_checkpoint.pth"
    marker = tmp_path / "code_ran"
    _bad_checkpoint(path, kind, marker)
    with pytest.raises(ValueError) as e:
        pretrain_clip.main(["--output", str(out), "--resume"])
    message = str(e.value)
    assert message.startswith(f"{path}: cannot resume from it")
    assert "remove it" in message and "--output" in message
    assert "weights_only" not in _shown(e) and "can still be loaded" not in _shown(e)
    if kind == "hostile":
        assert "loading it could run code" in message
    assert not marker.exists()
    assert path.exists()  # left for the user to look at


def test_hostile_clip_weights_give_no_advice_to_load_them_unsafely(tmp_path):
    path = tmp_path / "hostile.pt"
    marker = tmp_path / "code_ran"
    torch.save({"visual.conv1.weight": _RunsCode(str(marker))}, path)
    with pytest.raises(ValueError) as e:
        load_clip_state_dict(str(path), "RNtiny")
    message = str(e.value)
    assert str(path) in message and "loading it could run code" in message
    assert "weights_only" not in _shown(e) and "can still be loaded" not in _shown(e)
    assert not marker.exists()
