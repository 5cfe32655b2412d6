"""Shared pytest fixtures: small CLIP checkpoints written the way OpenAI distributes them.

``clip_tiny_checkpoints`` writes one randomly initialised RNtiny CLIP twice, as a plain state dict
(conv/linear weights in fp16, BatchNorm in fp32, as OpenAI's files) and as a TorchScript archive
made with ``torch.jit.trace_module`` on ``encode_image`` / ``encode_text`` (with OpenAI's
``input_resolution`` / ``context_length`` / ``vocab_size`` entries). BatchNorm statistics and affine
parameters are randomised so that a wrong key mapping cannot go unnoticed; weights are rounded to
fp16 values, so ``clip.load(path, jit=False)`` and a float32 loader see the same numbers.
"""

import dataclasses
import os
import warnings
from types import SimpleNamespace

import pytest
import torch
from clip.model import CLIP, convert_weights
from torch import nn

from detectron2.config import get_cfg

import gridclip_d2  # noqa: F401  (registration)
from gridclip_d2 import add_gridclip_config
from gridclip_d2.clip_arch import CLIP_ARCHS

# Threads: the suite runs on 2 CPU cores.
torch.set_num_threads(min(2, os.cpu_count() or 1))

# A short pretraining of the small CLIP stands in for MODEL.CLIP.WEIGHTS "synthetic" (the full one
# takes minutes): no test needs its recognition, every test needs its file, format and code path.
SESSION_CLIP = dict(steps=30, batch_size=32, warmup=3, num_pairs=256, checkpoint_period=1000)


@pytest.fixture(scope="session", autouse=True)
def session_synthetic_clip(tmp_path_factory):
    """``MODEL.CLIP.WEIGHTS synthetic`` for the whole session (subprocesses included, through
    ``$GRIDCLIP_SYNTHETIC_CLIP``): the real pretraining, short, in a temporary folder, so that
    ``make test`` neither pays for nor depends on the cached full run in datasets/."""
    from gridclip_d2.pretrain import PretrainConfig, pretrain_clip

    root = tmp_path_factory.mktemp("synthetic_clip")
    path = pretrain_clip(
        str(root / "clip"),
        PretrainConfig(**SESSION_CLIP),
        datasets_root=str(root / "captions"),
        evaluate=False,
        progress=False,
    )
    before = os.environ.get("GRIDCLIP_SYNTHETIC_CLIP")
    os.environ["GRIDCLIP_SYNTHETIC_CLIP"] = path
    yield path
    if before is None:
        os.environ.pop("GRIDCLIP_SYNTHETIC_CLIP", None)
    else:
        os.environ["GRIDCLIP_SYNTHETIC_CLIP"] = before


def make_random_clip(arch: str = "RNtiny", seed: int = 1234) -> CLIP:
    """A ``clip.model.CLIP`` with random weights, random BN statistics and fp16-representable
    weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(**dataclasses.asdict(CLIP_ARCHS[arch]))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    convert_weights(model)  # OpenAI's checkpoints hold fp16 conv/linear weights
    return model.eval()


@pytest.fixture(scope="session")
def random_clip():
    """:func:`make_random_clip`, for tests that write a CLIP checkpoint of their own (a fixture:
    importing ``conftest`` by name would find whichever conftest.py pytest imported last)."""
    return make_random_clip


@pytest.fixture(scope="session")
def clip_tiny_checkpoints(tmp_path_factory):
    """RNtiny CLIP as files: ``.state_dict_path``, ``.torchscript_path``, ``.state_dict``
    (float32)."""
    root = tmp_path_factory.mktemp("clip_ckpt")
    model = make_random_clip("RNtiny")
    state_dict_path = str(root / "rntiny_state_dict.pt")
    torch.save(model.state_dict(), state_dict_path)

    model = model.float()
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    arch = CLIP_ARCHS["RNtiny"]
    del model.context_length, model.vocab_size  # plain ints on clip.model.CLIP; buffers in archives
    model.register_buffer("input_resolution", torch.tensor(arch.image_resolution))
    model.register_buffer("context_length", torch.tensor(arch.context_length))
    model.register_buffer("vocab_size", torch.tensor(arch.vocab_size))
    image = torch.randn(1, 3, arch.image_resolution, arch.image_resolution)
    tokens = torch.zeros(2, arch.context_length, dtype=torch.long)
    tokens[:, :3] = torch.tensor([49406, 320, 49407])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace_module(model, {"encode_image": image, "encode_text": tokens})
    torchscript_path = str(root / "rntiny_jit.pt")
    torch.jit.save(traced, torchscript_path)
    return SimpleNamespace(
        arch="RNtiny",
        state_dict_path=state_dict_path,
        torchscript_path=torchscript_path,
        state_dict=expected,
    )


@pytest.fixture
def gridclip_cfg():
    """Factory of Detectron2 configs with gridclip keys, CPU, the bare CLIP ResNet backbone;
    keyword arguments override MODEL.CLIP.* (e.g. ``gridclip_cfg(ARCH="RNtiny", WEIGHTS="")``)."""

    def make(**clip_keys):
        cfg = get_cfg()
        add_gridclip_config(cfg)
        cfg.MODEL.DEVICE = "cpu"
        cfg.MODEL.BACKBONE.NAME = "build_clip_resnet_backbone"
        for k, v in clip_keys.items():
            setattr(cfg.MODEL.CLIP, k, v)
        return cfg

    return make


@pytest.fixture(scope="session")
def synthetic_weights(tmp_path_factory):
    """A GridCLIP checkpoint of the embedded default (configs/GridCLIP_synthetic.yaml) as training
    writes it: the small CLIP's backbone and a random head (seed 0). For inference tests (predictor,
    export, web page, display threshold)."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    cfg = get_cfg()
    add_gridclip_config(cfg)
    cfg.merge_from_file(
        os.path.join(
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            "configs",
            "GridCLIP_synthetic.yaml",
        )
    )
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("synthetic_weights")
    DetectionCheckpointer(build_model(cfg), save_dir=str(root)).save("model")
    return str(root / "model.pth")
