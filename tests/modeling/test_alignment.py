"""Image-level alignment: region pooling, the loss, the frozen teacher, the teacher cache file."""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detectron2.layers import ShapeSpec
from detectron2.solver.build import get_default_optimizer_params

from gridclip_d2.data.alignment_crops import crop_and_resize, crop_boxes
from gridclip_d2.modeling import teacher_cache as teacher_cache_module
from gridclip_d2.modeling.alignment import ImageAlignment, encode_teacher_images, pool_regions
from gridclip_d2.modeling.clip_resnet import build_clip_resnet_backbone
from gridclip_d2.modeling.teacher_cache import TeacherCache, cache_meta_from_cfg

D = 128  # RNtiny's embed_dim


@pytest.fixture
def align_cfg(gridclip_cfg):
    cfg = gridclip_cfg(ARCH="RNtiny", WEIGHTS="")
    cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.GRIDS = [1, 2]
    cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.TEACHER_INPUT_SIZE = 64
    return cfg


def _inputs(grids=(1, 2), sizes=((48, 64), (64, 40)), seed=0):
    """Batched inputs as the mapper makes them (no augmentation: boxes in original coordinates)."""
    rng = np.random.RandomState(seed)
    inputs = []
    for i, (h, w) in enumerate(sizes):
        image = rng.randint(0, 256, (h, w, 3)).astype(np.uint8)
        boxes = crop_boxes(grids, w, h)
        inputs.append(
            {
                "image_id": 100 + i,
                "align_boxes": boxes,
                "teacher_images": crop_and_resize(image, boxes, 64),
            }
        )
    return inputs


def _grid_embeddings(seed=0, n=2, shapes=((8, 8), (4, 4))):
    g = torch.Generator().manual_seed(seed)
    return [
        F.normalize(torch.randn(n, D, h, w, generator=g), dim=1).requires_grad_() for h, w in shapes
    ]


# ------------------------------------------------------------------------------------ pooling
def test_pool_regions_whole_image_mean_and_max():
    # 1 level, stride 8, a 2 x 2 map with D = 2: the whole-image region averages the four cells
    emb = torch.tensor([[[1.0, 0.0], [0.0, 3.0]], [[0.0, 2.0], [1.0, 1.0]]])[None]  # 1 x 2 x 2 x 2
    whole = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    mean = pool_regions([emb], [8], [whole], "mean")
    assert torch.allclose(mean, F.normalize(torch.tensor([[1.0, 1.0]]), dim=-1), atol=1e-6)
    # two levels are averaged before normalising: a constant level pulls the mean towards it
    coarse = torch.tensor([0.0, 4.0]).view(1, 2, 1, 1)
    both = pool_regions([emb, coarse], [8, 16], [whole], "mean")
    assert torch.allclose(both, F.normalize(torch.tensor([[0.5, 2.5]]), dim=-1), atol=1e-6)
    # max picks the peak of each dimension (3 at the bottom-right cell, 2 at the top-right)
    peak = pool_regions([emb], [8], [whole], "max")
    assert torch.allclose(peak, F.normalize(torch.tensor([[3.0, 2.0]]), dim=-1), atol=1e-6)
    with pytest.raises(ValueError, match="POOL"):
        pool_regions([emb], [8], [whole], "median")


def test_pool_regions_is_local_and_keeps_image_order():
    # left half of the map is e0, right half e1: each half-image region gets its own embedding
    emb = torch.zeros(2, 2, 4, 8)
    emb[:, 0, :, :4] = 1.0
    emb[:, 1, :, 4:] = 1.0
    emb[1] = emb[1].flip(-1)  # image 1 is mirrored
    left, right = torch.tensor([[0.0, 0, 24, 32]]), torch.tensor([[40.0, 0, 64, 32]])
    out = pool_regions([emb], [8], [torch.cat([left, right]), left], "mean")
    assert out.shape == (3, 2)
    assert torch.allclose(out, torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]), atol=1e-6)


# ------------------------------------------------------------------------------------ loss
def test_loss_finite_and_gradient_reaches_grid_embeddings_only(align_cfg):
    align = ImageAlignment(align_cfg)
    assert align.teacher is not None and align.cache is None
    teacher_before = {k: v.clone() for k, v in align.teacher.state_dict().items()}
    assert all(not p.requires_grad for p in align.teacher.parameters())

    align.train()
    assert not align.teacher.training  # the teacher stays in eval mode
    grids = _grid_embeddings()
    losses = align(grids, [8, 16], _inputs())
    loss = losses["loss_image_align"]
    assert set(losses) == {"loss_image_align"} and loss.dim() == 0
    assert torch.isfinite(loss) and loss > 0
    # L1 norm of the difference of unit vectors: at most 2 * sqrt(D) per region
    assert loss <= 2 * D**0.5
    loss.backward()
    assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in grids)
    assert all(p.grad is None for p in align.teacher.parameters())
    after = align.teacher.state_dict()
    assert all(torch.equal(teacher_before[k], after[k]) for k in teacher_before)
    # Detectron2's optimizer gets no teacher parameter (this module has no trainable one)
    assert get_default_optimizer_params(align) == []


def test_teacher_stays_out_of_checkpoints_and_is_never_loaded(align_cfg, tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer

    align = ImageAlignment(align_cfg)
    own = {k: v.clone() for k, v in align.teacher.state_dict().items()}
    assert own and not any(k.startswith("teacher.") for k in align.state_dict())
    # a checkpoint without teacher entries loads with no missing keys
    assert align.load_state_dict({}, strict=True) is not None
    # one that carries different teacher tensors leaves the teacher as built
    altered = {"teacher." + k: v + 1 for k, v in own.items() if v.is_floating_point()}
    align.load_state_dict(altered, strict=False)
    assert all(torch.equal(own[k], v) for k, v in align.teacher.state_dict().items())
    # Detectron2's checkpointer round trip: the file holds no teacher
    DetectionCheckpointer(align, str(tmp_path)).save("model")
    saved = torch.load(str(tmp_path / "model.pth"), weights_only=False)["model"]
    assert not any(k.startswith("teacher.") for k in saved)


def test_loss_weight_and_zero_when_student_equals_teacher(align_cfg):
    align_cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.GRIDS = [1]
    align_cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.LOSS_WEIGHT = 3.0
    align = ImageAlignment(align_cfg)
    inputs = _inputs(grids=(1,))
    target = encode_teacher_images(align.teacher, torch.cat([x["teacher_images"] for x in inputs]))
    assert target.shape == (2, D)
    assert torch.allclose(target.norm(dim=1), torch.ones(2))
    # a spatially constant map equal to the teacher's embedding pools to exactly that embedding
    same = [target[:, :, None, None].expand(2, D, h, h).contiguous() for h in (8, 4)]
    zero = align(same, [8, 16], inputs)["loss_image_align"]
    assert zero.abs() < 1e-5
    grids = _grid_embeddings()
    expected = (
        3.0
        * (pool_regions(grids, [8, 16], [x["align_boxes"] for x in inputs]) - target)
        .abs()
        .sum(dim=1)
        .mean()
    )
    assert torch.allclose(align(grids, [8, 16], inputs)["loss_image_align"], expected, atol=1e-6)


def test_inputs_without_regions(align_cfg):
    align = ImageAlignment(align_cfg)
    grids = _grid_embeddings()
    none = align(grids, [8, 16], [{"image_id": 1}, {"image_id": 2}])["loss_image_align"]
    assert none.item() == 0.0 and none.requires_grad
    none.backward()  # touches the graph (DDP needs every used parameter to get a gradient)
    inputs = _inputs()
    partial = align(_grid_embeddings(), [8, 16], [inputs[0], {"image_id": 5}])["loss_image_align"]
    alone = align([g[:1] for g in _grid_embeddings()], [8, 16], [inputs[0]])["loss_image_align"]
    assert torch.allclose(partial, alone)
    del inputs[1]["teacher_images"]
    with pytest.raises(KeyError, match="image id 101.*teacher_images"):
        align(_grid_embeddings(), [8, 16], inputs)


def test_teacher_has_the_backbones_clip_weights(align_cfg):
    # the same (seeded random) CLIP as the backbone's, frozen
    backbone = build_clip_resnet_backbone(align_cfg, ShapeSpec(channels=3))
    teacher = ImageAlignment(align_cfg).teacher
    own, theirs = backbone.state_dict(), teacher.state_dict()
    assert set(theirs) <= set(own) and any("attnpool" in k for k in theirs)
    for k, v in theirs.items():
        assert torch.equal(v, own[k]), k


# ------------------------------------------------------------------------------------ cache
def _cache(cfg, ids=(100, 101), K=5):
    g = torch.Generator().manual_seed(1)
    emb = {i: F.normalize(torch.randn(K, D, generator=g), dim=-1) for i in ids}
    return TeacherCache.from_dict(cache_meta_from_cfg(cfg), emb), emb


def test_cache_round_trip_and_alignment_uses_it(align_cfg, tmp_path):
    cache, emb = _cache(align_cfg)
    path = str(tmp_path / "teacher.pt")
    cache.save(path)
    loaded = TeacherCache.load(path, cache_meta_from_cfg(align_cfg))
    assert len(loaded) == 2 and 100 in loaded and 7 not in loaded
    assert torch.equal(loaded[101], emb[101]) and 7 not in loaded
    assert [f for f in os.listdir(tmp_path)] == ["teacher.pt"]  # no temporary file left

    align_cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.CACHE_FILE = path
    align = ImageAlignment(align_cfg)
    assert align.teacher is None and len(align.cache) == 2
    assert not any(k.startswith("cache") for k in align.state_dict())
    inputs = _inputs()
    for x in inputs:
        del x["teacher_images"]
    grids = _grid_embeddings()
    loss = align(grids, [8, 16], inputs)["loss_image_align"]
    student = pool_regions(grids, [8, 16], [x["align_boxes"] for x in inputs])
    expected = (student - torch.cat([emb[100], emb[101]])).abs().sum(dim=1).mean()
    assert torch.allclose(loss, expected, atol=1e-6)

    inputs[1]["image_id"] = 999
    with pytest.raises(KeyError, match=f"999.*{path}"):
        align(grids, [8, 16], inputs)


@pytest.mark.parametrize(
    "key,value",
    [
        ("MODEL.CLIP.ARCH", "RN50"),
        ("MODEL.CLIP.WEIGHTS", "RN50"),
        ("MODEL.CLIP.INIT_SEED", 3),
        ("MODEL.GRIDCLIP.IMAGE_ALIGN.GRIDS", [1, 3]),
        ("MODEL.GRIDCLIP.IMAGE_ALIGN.TEACHER_INPUT_SIZE", 96),
    ],
)
def test_cache_meta_mismatch_names_field_and_file(align_cfg, tmp_path, key, value):
    path = str(tmp_path / "teacher.pt")
    _cache(align_cfg)[0].save(path)
    align_cfg.merge_from_list([key, value])
    field = {
        "ARCH": "arch",
        "WEIGHTS": "weights",
        "INIT_SEED": "init_seed",
        "GRIDS": "grids",
        "TEACHER_INPUT_SIZE": "size",
    }[key.split(".")[-1]]
    with pytest.raises(ValueError, match=f"{path}.* {field}="):
        TeacherCache.load(path, cache_meta_from_cfg(align_cfg))


def test_cache_file_errors_and_atomic_writes(align_cfg, tmp_path, monkeypatch):
    path = str(tmp_path / "teacher.pt")
    with pytest.raises(FileNotFoundError, match="teacher.pt"):
        TeacherCache.load(path)
    with open(path, "wb") as f:
        f.write(b"garbage")
    with pytest.raises(ValueError, match="cannot read teacher cache .*teacher.pt"):
        TeacherCache.load(path)
    torch.save({"embeddings": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="teacher.pt is not in the expected format"):
        TeacherCache.load(path)

    good, emb = _cache(align_cfg)
    good.save(path)
    before = open(path, "rb").read()

    def failing_save(obj, f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(teacher_cache_module.torch, "save", failing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        _cache(align_cfg, ids=(1, 2, 3))[0].save(path)
    monkeypatch.undo()
    assert open(path, "rb").read() == before  # the existing cache is untouched
    assert os.listdir(tmp_path) == ["teacher.pt"]
    assert torch.equal(TeacherCache.load(path)[100], emb[100])


def test_cache_rejects_inconsistent_contents(align_cfg):
    meta = cache_meta_from_cfg(align_cfg)
    with pytest.raises(ValueError, match="N x K x D"):
        TeacherCache(meta, [1, 2], torch.zeros(3, 5, D))
    with pytest.raises(ValueError, match="duplicate image id 1"):
        TeacherCache(meta, [1, 1], torch.zeros(2, 5, D))
    with pytest.raises(ValueError, match="meta lacks"):
        TeacherCache({"arch": "RNtiny"}, [1], torch.zeros(1, 5, D))


# ---------------------------------------------------------------------------- proposal regions
def test_proposal_regions_teacher_sees_framed_crops_weights_and_levels(align_cfg):
    """REGIONS "proposals": the teacher embeds the square of twice each box's longer side cut from
    the input image (the crops its zero-shot accuracy is measured on); per-region weights scale
    each region's L1 term; LEVELS pools a subset of the levels."""
    from gridclip_d2.region_crops import framed_boxes

    align_cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.REGIONS = "proposals"
    align_cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.LOSS_WEIGHT = 2.0
    align = ImageAlignment(align_cfg)
    assert align.regions == "proposals" and align.levels is None
    rng = np.random.RandomState(0)
    images = [rng.randint(0, 256, (64, 64, 3)).astype(np.uint8) for _ in range(2)]
    inputs = [{"image": torch.from_numpy(im).permute(2, 0, 1).contiguous()} for im in images]
    boxes = [torch.tensor([[10.0, 12, 30, 40], [40, 40, 60, 50]]), torch.tensor([[0.0, 0, 8, 8]])]
    crops = torch.cat(
        [crop_and_resize(im, framed_boxes(b, 64, 64), 64) for im, b in zip(images, boxes)]
    )
    teacher = encode_teacher_images(align.teacher, crops)  # 3 x D
    grids = _grid_embeddings()
    student = pool_regions(grids, [8, 16], boxes)
    per_region = (student - teacher).abs().sum(dim=1)
    loss = align(grids, [8, 16], inputs, boxes)["loss_image_align"]
    torch.testing.assert_close(loss, 2.0 * per_region.mean())
    weights = [torch.tensor([1.0, 0.0]), torch.tensor([0.5])]
    loss = align(grids, [8, 16], inputs, boxes, weights)["loss_image_align"]
    torch.testing.assert_close(loss, 2.0 * (per_region[0] + 0.5 * per_region[2]) / 3)
    # a level subset: only the first level is pooled
    align.levels = [0]
    loss = align(grids, [8, 16], inputs, boxes)["loss_image_align"]
    only_first = pool_regions(grids[:1], [8], boxes)
    torch.testing.assert_close(loss, 2.0 * (only_first - teacher).abs().sum(dim=1).mean())
    with pytest.raises(ValueError, match="one box tensor per input"):
        align(grids, [8, 16], inputs)


def test_proposal_regions_configuration_errors(align_cfg, tmp_path):
    align_cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.REGIONS = "boxes"
    with pytest.raises(ValueError, match="REGIONS must be one of"):
        ImageAlignment(align_cfg)
    align_cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.REGIONS = "proposals"
    align_cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.LEVELS = ["p9"]
    with pytest.raises(ValueError, match=r"LEVELS \['p9'\]: \['p9'\] not in"):
        ImageAlignment(align_cfg)
    align_cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.LEVELS = []
    cache = tmp_path / "cache.pth"
    cache.write_bytes(b"")
    align_cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.CACHE_FILE = str(cache)
    with pytest.raises(ValueError, match="cannot use a teacher cache"):
        ImageAlignment(align_cfg)
