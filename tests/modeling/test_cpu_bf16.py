"""bfloat16 CPU inference (MODEL.GRIDCLIP.CPU_BF16, the predictor's and demo's --bf16): it runs
only where the CPU has AMX or AVX-512 BF16 units (elsewhere it says so and runs float32), the
head's outputs stay float32, and the detections are float32's within bfloat16's rounding."""

import logging
import os

import pytest
import torch

from detectron2.data.detection_utils import read_image
from detectron2.structures import pairwise_iou

from gridclip_d2.modeling import cpu_bf16
from gridclip_d2.predictor import GridCLIPPredictor

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "GridCLIP_synthetic.yaml")
IMAGES = [os.path.join(REPO, "demo", "examples", f) for f in ("200016.jpg", "200021.jpg")]

needs_units = pytest.mark.skipif(
    cpu_bf16.cpu_bf16_units() is None, reason="this CPU has neither AMX nor AVX-512 BF16 units"
)


def _predictor(weights, bf16: bool) -> GridCLIPPredictor:
    # every detection above LVIS's test threshold, as evaluation sees them
    return GridCLIPPredictor.from_config_file(
        CONFIG, weights, bf16=bf16, score_thresh=1e-4, nms_thresh=1.0
    )


def _instances(predictor):
    return [predictor(read_image(p, format="RGB")) for p in IMAGES]


@needs_units
def test_bf16_detections_are_float32_within_rounding(synthetic_weights, caplog):
    with caplog.at_level(logging.INFO, logger="gridclip_d2.modeling.cpu_bf16"):
        bf16 = _predictor(synthetic_weights, True)
    assert bf16.model.cpu_bf16
    assert "bfloat16 inference on this CPU's" in caplog.text
    fp32 = _predictor(synthetic_weights, False)
    assert not fp32.model.cpu_bf16

    for ref, got in zip(_instances(fp32), _instances(bf16)):
        assert got.scores.dtype == torch.float32 and got.pred_boxes.tensor.dtype == torch.float32
        assert len(got) == len(ref) > 0
        # bfloat16 keeps 8 significant bits (relative rounding 2^-9) through ~20 convolutions of
        # backbone, neck and head: a score moves by a few 1e-3; the cosines, scores and decoding
        # are float32. Near-ties may swap, so float32's top detections are matched, not indexed.
        top = ref[ref.scores.argsort(descending=True)[:30]]
        iou = pairwise_iou(top.pred_boxes, got.pred_boxes)  # 30 x M
        same_class = top.pred_classes[:, None] == got.pred_classes[None, :]
        score_gap = (top.scores[:, None] - got.scores[None, :]).abs()
        match = same_class & (iou > 0.9) & (score_gap < 0.02)
        found = match.any(dim=1).float().mean().item()
        assert found >= 0.9, f"{found:.0%} of float32's top 30 detections found in bfloat16's"


def test_without_units_it_says_so_and_runs_float32(synthetic_weights, monkeypatch, caplog):
    monkeypatch.setattr(cpu_bf16, "cpu_bf16_units", lambda: None)
    with caplog.at_level(logging.WARNING, logger="gridclip_d2.modeling.cpu_bf16"):
        asked = _predictor(synthetic_weights, True)
    assert not asked.model.cpu_bf16
    assert "MODEL.GRIDCLIP.CPU_BF16" in caplog.text and "running float32" in caplog.text
    plain = _predictor(synthetic_weights, False)
    for a, b in zip(_instances(asked), _instances(plain)):
        assert torch.equal(a.scores, b.scores)
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)


def test_not_on_a_gpu_device(caplog):
    with caplog.at_level(logging.INFO, logger="gridclip_d2.modeling.cpu_bf16"):
        assert not cpu_bf16.resolve_cpu_bf16(True, "cuda:0")
    assert "applies to the CPU" in caplog.text
    assert not cpu_bf16.resolve_cpu_bf16(False, "cpu")


@pytest.mark.parametrize(
    "flags, units",
    [({"amx_bf16", "avx512_bf16"}, "AMX"), ({"avx512_bf16"}, "AVX-512 BF16"), ({"avx2"}, None)],
)
def test_units_from_cpuinfo_when_torch_has_no_probe(monkeypatch, flags, units):
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.delattr(torch.cpu, probe, raising=False)
    monkeypatch.setattr(cpu_bf16, "_cpuinfo_flags", lambda: flags)
    cpu_bf16.cpu_bf16_units.cache_clear()
    try:
        assert cpu_bf16.cpu_bf16_units() == units
    finally:
        cpu_bf16.cpu_bf16_units.cache_clear()
