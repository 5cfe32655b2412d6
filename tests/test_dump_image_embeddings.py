"""tools/dump_image_embeddings.py: cached teacher embeddings give the on-the-fly teacher's loss."""

import importlib.util
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from detectron2.data import DatasetCatalog
from detectron2.structures import BoxMode

from gridclip_d2.data.mapper import GridCLIPDatasetMapper
from gridclip_d2.modeling.alignment import ImageAlignment, encode_teacher_images
from gridclip_d2.modeling.teacher_cache import TeacherCache, cache_meta_from_cfg

_TOOL = os.path.join(os.path.dirname(__file__), os.pardir, "tools", "dump_image_embeddings.py")
_spec = importlib.util.spec_from_file_location("dump_image_embeddings", _TOOL)
dump_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dump_tool)

SIZES = [(48, 64), (64, 40), (50, 50)]  # H, W of the tiny data set's images


@pytest.fixture
def tiny_dataset(tmp_path):
    """A 3-image data set registered in DatasetCatalog (removed afterwards)."""
    rng = np.random.RandomState(0)
    dicts = []
    for i, (h, w) in enumerate(SIZES):
        path = str(tmp_path / f"img{i}.png")
        Image.fromarray(rng.randint(0, 256, (h, w, 3)).astype(np.uint8)).save(path)
        dicts.append(
            {
                "file_name": path,
                "image_id": 10 + i,
                "height": h,
                "width": w,
                "annotations": [
                    {"bbox": [2, 2, 20, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}
                ]
                if i != 1
                else [],
            }
        )
    name = f"gridclip_test_dump_{os.path.basename(str(tmp_path))}"
    DatasetCatalog.register(name, lambda: [dict(d) for d in dicts])
    yield name, dicts
    DatasetCatalog.remove(name)


@pytest.fixture
def dump_cfg(gridclip_cfg):
    cfg = gridclip_cfg(ARCH="RNtiny", WEIGHTS="")
    cfg.INPUT.FORMAT = "BGR"  # the mapper converts to RGB; the tool reads RGB: same crops
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 128
    cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.GRIDS = [1, 2]
    cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.TEACHER_INPUT_SIZE = 64
    return cfg


def _map(mapper, dicts):
    out = []
    for k, d in enumerate(dicts):
        np.random.seed(k)  # same random flip for both mappers
        out.append(mapper(d))
    return out


def _grid_embeddings(n):
    g = torch.Generator().manual_seed(0)
    return [F.normalize(torch.randn(n, 128, s, s, generator=g), dim=1) for s in (16, 8, 4)]


def test_cached_embeddings_give_the_on_the_fly_loss(dump_cfg, tiny_dataset, tmp_path):
    name, dicts = tiny_dataset
    out = str(tmp_path / "cache" / "teacher.pt")
    cache = dump_tool.dump_image_embeddings(dump_cfg, [name], out, batch_size=3)
    assert os.path.isfile(out) and cache.embeddings.shape == (3, 5, 128)

    on_the_fly = ImageAlignment(dump_cfg)
    inputs_a = _map(GridCLIPDatasetMapper(dump_cfg, True), dicts)
    assert all(x["teacher_images"].shape == (5, 3, 64, 64) for x in inputs_a)

    cached_cfg = dump_cfg.clone()
    cached_cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.CACHE_FILE = out
    cached_cfg.DATASETS.TRAIN = (name,)
    cached = ImageAlignment(cached_cfg)
    assert cached.teacher is None and len(cached.cache) == 3
    inputs_b = _map(GridCLIPDatasetMapper(cached_cfg, True), dicts)
    assert all("teacher_images" not in x for x in inputs_b)
    for a, b in zip(inputs_a, inputs_b):
        assert torch.equal(a["align_boxes"], b["align_boxes"])

    # the stored embeddings are the teacher's on the mapper's crops
    for x in inputs_a:
        fresh = encode_teacher_images(on_the_fly.teacher, x["teacher_images"])
        assert (fresh - cached.cache[x["image_id"]]).abs().max() < 1e-6

    grids = _grid_embeddings(3)
    loss_a = on_the_fly(grids, [8, 16, 32], inputs_a)["loss_image_align"]
    loss_b = cached(grids, [8, 16, 32], inputs_b)["loss_image_align"]
    assert torch.isfinite(loss_a) and loss_a > 0
    assert (loss_a - loss_b).abs() < 1e-6

    # The cache records the data set it embeds and refuses to serve another.
    other_cfg = cached_cfg.clone()
    other_cfg.DATASETS.TRAIN = ("synthetic_train",)
    with pytest.raises(
        ValueError, match=rf"datasets=.*'{name}'.*config needs datasets=.*'synthetic_train'"
    ):
        ImageAlignment(other_cfg)


def test_command_line(dump_cfg, tiny_dataset, tmp_path):
    name, _ = tiny_dataset
    config_file = tmp_path / "cfg.yaml"
    config_file.write_text(dump_cfg.dump())
    out = str(tmp_path / "cli.pt")
    dump_tool.main(
        [
            "--config-file",
            str(config_file),
            "--dataset",
            name,
            "--dataset",
            name,
            "--out",
            out,
            "--batch-size",
            "4",
            "MODEL.CLIP.INIT_SEED",
            "5",
        ]
    )
    cache = TeacherCache.load(out)
    assert cache.image_ids == [10, 11, 12]  # the repeated data set is not dumped twice
    assert cache.meta["init_seed"] == 5 and cache.meta["grids"] == [1, 2]
    assert torch.allclose(cache.embeddings.norm(dim=-1), torch.ones(3, 5), atol=1e-5)
    assert [d["name"] for d in cache.meta["datasets"]] == [name]
    dump_cfg.MODEL.CLIP.INIT_SEED = 5
    dump_cfg.DATASETS.TRAIN = (name,)
    cache.check_meta(cache_meta_from_cfg(dump_cfg))

    with pytest.raises(SystemExit):
        dump_tool.main(["--config-file", str(config_file), "--dataset", name])  # no --out


def test_missing_image_is_named_and_existing_cache_kept(dump_cfg, tiny_dataset, tmp_path):
    name, dicts = tiny_dataset
    out = str(tmp_path / "teacher.pt")
    dump_tool.dump_image_embeddings(dump_cfg, [name], out)
    before = open(out, "rb").read()
    os.remove(dicts[2]["file_name"])
    with pytest.raises(FileNotFoundError, match="img2.png"):
        dump_tool.dump_image_embeddings(dump_cfg, [name], out)
    assert open(out, "rb").read() == before
