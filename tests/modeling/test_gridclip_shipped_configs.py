"""GridCLIP built from the shipped LVIS configs (FPN and BiFPN) on a random CLIP checkpoint: one
training step through the real mapper (images with and without instances), gradients, frozen
parts, and inference."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.fcos import FCOS
from detectron2.solver import build_optimizer
from detectron2.utils.events import EventStorage

import gridclip_d2  # noqa: F401
from gridclip_d2 import add_gridclip_config
from gridclip_d2.data.lvis_v1 import lvis_v1_rare_class_ids
from gridclip_d2.data.mapper import GridCLIPDatasetMapper
from gridclip_d2.modeling.gridclip import GridCLIP

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
LOSS_NAMES = {"loss_cls", "loss_box_reg", "loss_quality", "loss_image_align"}


def _shipped_cfg(name, checkpoint):
    cfg = get_cfg()
    add_gridclip_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIGS, name))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.CLIP.ARCH = "RNtiny"
    cfg.MODEL.CLIP.WEIGHTS = checkpoint
    cfg.MODEL.GRIDCLIP.TEXT_EMBEDDINGS = ""
    # one prompt: 1203 names x 63 ensemble prompts would dominate the test's time
    cfg.MODEL.GRIDCLIP.PROMPT_ENSEMBLE = False
    # the federated loss needs LVIS's class counts (prepare_lvis_base.py); it has a test of its own
    cfg.MODEL.GRIDCLIP.USE_FED_LOSS = False
    cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.TEACHER_INPUT_SIZE = 64
    cfg.INPUT.MIN_SIZE_TRAIN = (128,)
    cfg.INPUT.MAX_SIZE_TRAIN = 160
    cfg.INPUT.RANDOM_FLIP = "none"
    return cfg


def _write_images(root, seed=0):
    """Three small RGB files: two with boxes (XYWH), one without any annotation."""
    rng = np.random.RandomState(seed)
    dicts = []
    specs = [
        (128, 160, [([10, 12, 50, 60], 3), ([70, 30, 80, 90], 1000)]),
        (144, 128, [([20, 20, 90, 100], 17)]),
        (128, 128, []),
    ]
    for i, (h, w, objs) in enumerate(specs):
        path = os.path.join(root, f"{i}.png")
        Image.fromarray(rng.randint(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)
        anns = [{"bbox": b, "bbox_mode": 1, "category_id": c, "iscrowd": 0} for b, c in objs]
        dicts.append(
            {"file_name": path, "image_id": i + 1, "height": h, "width": w, "annotations": anns}
        )
    return dicts


def _frozen_state(model):
    """Copies of what must never change: text embeddings, teacher, frozen backbone stages."""
    bottom_up = model.backbone.bottom_up
    frozen = {"text": model.head.classifier.embeddings.clone()}
    frozen.update(
        {f"teacher.{k}": v.clone() for k, v in model.image_alignment.teacher.state_dict().items()}
    )
    stem = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "layer1", "attnpool")  # FREEZE_AT 2
    for k, v in bottom_up.visual.state_dict().items():
        if k.split(".")[0] in stem:
            frozen[f"bottom_up.{k}"] = v.clone()
    return frozen


def _frozen_now(model, keys):
    now = {"text": model.head.classifier.embeddings}
    now.update({f"teacher.{k}": v for k, v in model.image_alignment.teacher.state_dict().items()})
    now.update(
        {f"bottom_up.{k}": v for k, v in model.backbone.bottom_up.visual.state_dict().items()}
    )
    return {k: now[k] for k in keys}


@pytest.fixture(
    scope="module",
    params=["GridCLIP_LVIS.yaml", "GridCLIP_LVIS_BiFPN.yaml", "GridCLIP_LVIS_fast.yaml"],
)
def trained_step(request, clip_tiny_checkpoints, tmp_path_factory):
    """Model from a shipped config after one optimiser step, with what the step produced."""
    cfg = _shipped_cfg(request.param, clip_tiny_checkpoints.state_dict_path)
    torch.manual_seed(0)
    model = build_model(cfg)
    mapper = GridCLIPDatasetMapper(cfg, is_train=True)
    batch = [mapper(d) for d in _write_images(str(tmp_path_factory.mktemp("imgs")))]
    optimizer = build_optimizer(cfg, model)
    frozen = _frozen_state(model)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.train()
    with EventStorage():
        losses = model(batch)
        sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    optimizer.step()
    return {
        "cfg": cfg,
        "model": model,
        "batch": batch,
        "losses": losses,
        "grads": grads,
        "frozen": frozen,
        "trainable": trainable,
    }


def test_shipped_config_builds_gridclip(trained_step):
    model, cfg = trained_step["model"], trained_step["cfg"]
    assert type(model) is GridCLIP and isinstance(model, FCOS)
    assert (
        model.num_classes == 1203 == len(MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).thing_classes)
    )
    assert model.head.classifier.embeddings.shape == (1203, 128)
    assert model.max_detections_per_image == 300 and model.test_score_thresh == pytest.approx(1e-4)
    # lvis_v1_train_base: the rare classes are novel and left out of the classification loss.
    rare = lvis_v1_rare_class_ids()
    assert len(rare) == 337
    assert (
        not model.loss_columns.class_mask[rare].any()
        and int(model.loss_columns.class_mask.sum()) == 1203 - 337
    )
    assert model.image_alignment is not None
    # the head the config asks for (GridCLIP_LVIS_fast.yaml: 1x1 embedding conv, 2-conv towers)
    k, depth = cfg.MODEL.GRIDCLIP.EMBED_KERNEL_SIZE, cfg.MODEL.GRIDCLIP.NUM_CONVS
    assert model.head.embed.kernel_size == (k, k)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.head.cls_subnet) == depth
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.head.bbox_subnet) == depth
    if "fast" in cfg.OUTPUT_DIR:
        assert (k, depth) == (1, 2)


def test_train_step_losses_named_and_finite(trained_step):
    batch, losses = trained_step["batch"], trained_step["losses"]
    assert len(batch[2]["instances"]) == 0 and len(batch[0]["instances"]) == 2
    assert set(losses) == LOSS_NAMES
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), name
    assert losses["loss_box_reg"] > 0 and losses["loss_image_align"] > 0


def test_gradients_reach_head_neck_and_unfrozen_backbone(trained_step):
    grads = trained_step["grads"]

    def reached(prefix):
        return any(n.startswith(prefix) and g.abs().sum() > 0 for n, g in grads.items())

    for prefix in [
        "head.cls_subnet",
        "head.bbox_subnet",
        "head.embed",
        "head.bbox_pred",
        "head.ctrness",
        "head.scales",
        "head.log_temperature",
        "head.logit_bias",
        "backbone.bottom_up.visual.layer2",
        "backbone.bottom_up.visual.layer3",
        "backbone.bottom_up.visual.layer4",
    ]:
        assert reached(prefix), prefix
    neck = [
        n for n in grads if n.startswith("backbone.") and not n.startswith("backbone.bottom_up")
    ]
    assert neck and all(grads[n].abs().sum() > 0 for n in neck if n.endswith("weight"))
    for frozen in [
        "backbone.bottom_up.visual.conv1",
        "backbone.bottom_up.visual.layer1",
        "image_alignment.teacher",
    ]:
        assert not any(n.startswith(frozen) for n in grads), frozen


def test_frozen_parts_bit_identical_and_trainable_parts_change(trained_step):
    model, frozen = trained_step["model"], trained_step["frozen"]
    assert len(frozen) > 20
    for k, after in _frozen_now(model, frozen.keys()).items():
        assert torch.equal(frozen[k], after), k
    params = dict(model.named_parameters())
    for prefix in [
        "head.embed.weight",
        "head.cls_subnet.0.weight",
        "backbone.bottom_up.visual.layer4",
    ]:
        names = [n for n in trained_step["trainable"] if n.startswith(prefix)]
        assert names and any(
            not torch.equal(trained_step["trainable"][n], params[n]) for n in names
        ), prefix


def test_inference_at_most_300_boxes_inside_the_image(trained_step):
    model, cfg = trained_step["model"], trained_step["cfg"]
    model.eval()
    image = torch.randint(0, 256, (3, 128, 160), dtype=torch.uint8)
    inputs = [{"image": image, "height": 256, "width": 320}, {"image": image[:, :96, :128]}]
    with torch.no_grad():
        out = model(inputs)
    assert len(out) == 2
    for o, (h, w) in zip(out, [(256, 320), (96, 128)]):
        inst = o["instances"]
        assert inst.image_size == (h, w)
        assert 0 < len(inst) <= cfg.TEST.DETECTIONS_PER_IMAGE == 300
        b = inst.pred_boxes.tensor
        assert (
            (b[:, 0] >= 0).all()
            and (b[:, 1] >= 0).all()
            and (b[:, 2] <= w).all()
            and (b[:, 3] <= h).all()
        )
        assert (inst.scores >= cfg.MODEL.GRIDCLIP.SCORE_THRESH_TEST).all() and (
            inst.scores <= 1
        ).all()
        assert inst.pred_classes.max() < 1203
    model.train()
