"""CLIP's contrastive pretraining of a reduced ``clip.model.CLIP`` on synthetic image-caption pairs.

The model is the ``clip`` package's own ``CLIP`` class (ModifiedResNet vision tower, text
transformer) built from ``CLIP_ARCHS[arch]``; captions go through the real BPE tokenizer
(``clip.tokenize``). The loss is CLIP's: symmetric cross-entropy over the batch's image-text cosine
similarities times the learned ``logit_scale`` (clamped at 100, as CLIP). AdamW, linear warm-up then
cosine decay.

Output folder::

    last_checkpoint.pth   model + optimizer + step, every ``checkpoint_period`` steps (--resume)
    <arch>_synthetic.pt   the final weights: ``CLIP.state_dict()`` after
                          ``clip.model.convert_weights``, i.e. OpenAI's layout and dtypes;
                          ``clip.model.build_model`` accepts it and ``MODEL.CLIP.WEIGHTS`` loads it
                          like ``RN50.pt``
    zero_shot.json        zero-shot accuracy on single-object crops of synthetic_val and
                          synthetic_test, per class group

Deterministic: the batches of step ``i`` are drawn from a generator seeded with ``(seed, i)``, so a
resumed run sees the batches an uninterrupted run would (same machine and thread count give the
same weights).
"""

import dataclasses
import logging
import math
import os
import time
from typing import Optional

import clip
import torch
import torch.nn.functional as F
from clip.model import CLIP, convert_weights
from tqdm import tqdm

from ..atomic_write import atomic_json_dump, atomic_torch_save, remove_stale_temp_files
from ..clip_arch import get_arch
from ..data.synthetic_captions import NUM_PAIRS, load_caption_dataset
from ..modeling.clip_resnet import normalize_clip_input
from ..torch_load import load_error_text

__all__ = ["PretrainConfig", "pretrain_clip", "final_weights_name"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PretrainConfig:
    arch: str = "RNtiny96"
    # chosen on synthetic_val's crops: 500 steps of 128 pairs (225 s on 2 Xeon cores) give 96%
    # zero-shot accuracy there, 400 steps 90%, 300 steps of 128 without UniCL's targets 74%
    steps: int = 500
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 30
    seed: int = 0
    num_pairs: int = NUM_PAIRS
    checkpoint_period: int = 100
    match_same_objects: bool = True  # UniCL's targets (see contrastive_loss)


def final_weights_name(arch: str) -> str:
    return f"{arch}_synthetic.pt"


def _lr_at(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))


def _optimizer(model: CLIP, cfg: PretrainConfig) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [
        p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)
    ]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )


def _colour_pools(named) -> list:
    """Per colour, the indices of the captions that name an object of that colour."""
    from ..data.synthetic_shapes import COLOURS, colour_and_shape

    pools = {c: [] for c in COLOURS}
    for i, cats in enumerate(named):
        for c in {colour_and_shape(k)[0] for k in cats}:
            pools[c].append(i)
    return [torch.tensor(p) for p in pools.values() if p]


def _batch_indices(step: int, cfg: PretrainConfig, num: int, colour_pools) -> torch.Tensor:
    """Half the batch at random, half from captions that name one colour (drawn per step): colour
    alone then cannot tell those pairs apart, so the loss also teaches shapes (with random
    batches only, colour nearly identifies every caption and shape gets little gradient)."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    focused = cfg.batch_size // 2
    pool = colour_pools[int(torch.randint(len(colour_pools), (1,), generator=g))]
    same = pool[torch.randperm(len(pool), generator=g)[:focused]]
    rest = torch.randperm(num, generator=g)
    rest = rest[~torch.isin(rest, same)][: cfg.batch_size - len(same)]
    return torch.cat([same, rest])


def contrastive_loss(
    model: CLIP, images: torch.Tensor, tokens: torch.Tensor, same: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE loss of a batch (images B x 3 x S x S normalised, tokens B x L).

    ``same`` (B x B bool, True on the diagonal): pairs whose captions name the same objects, which
    then count as matches, the target of each row spread evenly over them (UniCL's unified
    contrastive loss, Yang et al. 2022). Without it only the diagonal matches, as in CLIP: with 30
    categories a batch of 128 holds many captions of one object, and CLIP's loss would push an
    image away from every one of them but its own."""
    logits_per_image, logits_per_text = model(images, tokens)
    if same is None:
        labels = torch.arange(images.shape[0])
        return (
            F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)
        ) / 2
    target = same.float() / same.float().sum(dim=1, keepdim=True)  # B x B, rows sum to 1
    return (
        F.cross_entropy(logits_per_image, target) + F.cross_entropy(logits_per_text, target.t())
    ) / 2


def _read_resume_checkpoint(ckpt_path: str, cfg: PretrainConfig) -> Optional[dict]:
    """The state ``--resume`` continues from (None: no checkpoint there), or an error naming the
    file when it is unreadable, not a pretraining checkpoint, or of other settings."""
    if not os.path.isfile(ckpt_path):
        return None
    remedy = "remove it to pretrain from step 0, or choose another --output"
    try:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"{ckpt_path}: cannot resume from it ({load_error_text(e)}): it is corrupt (empty or "
            "truncated) or not a plain checkpoint of tensors and plain data (it is read with "
            f"PyTorch's safe loader); {remedy}"
        ) from None
    if not isinstance(state, dict) or not {"model", "optimizer", "step", "config"} <= set(state):
        raise ValueError(
            f"{ckpt_path}: cannot resume from it: not a checkpoint of this pretraining (a dict of "
            f"model, optimizer, step and config); {remedy}"
        )
    if state["config"] != dataclasses.asdict(cfg):
        raise ValueError(
            f"{ckpt_path} was written with settings {state['config']}, "
            f"not {dataclasses.asdict(cfg)}; "
            "resume with the same settings or choose another --output"
        )
    return state


def pretrain_clip(
    output_dir: str,
    cfg: Optional[PretrainConfig] = None,
    resume: bool = False,
    datasets_root: Optional[str] = None,
    evaluate: bool = True,
    progress: bool = True,
) -> str:
    """Train (or resume) and write the final weights; returns their path (see module docstring)."""
    cfg = cfg or PretrainConfig()
    arch = get_arch(cfg.arch)
    if cfg.steps <= 0 or cfg.batch_size <= 1:
        raise ValueError(
            f"pretraining needs steps > 0 and batch size > 1, got {cfg.steps}, {cfg.batch_size}"
        )
    os.makedirs(output_dir, exist_ok=True)
    remove_stale_temp_files(output_dir)  # a kill during an earlier run's checkpoint save
    ckpt_path = os.path.join(output_dir, "last_checkpoint.pth")
    state = _read_resume_checkpoint(ckpt_path, cfg) if resume else None  # before the slow parts
    images, captions, named = load_caption_dataset(datasets_root, cfg.num_pairs)
    colour_pools = _colour_pools(named)
    # one integer per caption for the set of categories it names (equal sets: equal keys)
    sets = {s: i for i, s in enumerate(sorted({tuple(sorted(n)) for n in named}))}
    keys = torch.tensor([sets[tuple(sorted(n))] for n in named])
    if arch.image_resolution != images.shape[-1]:
        raise ValueError(
            f"CLIP {cfg.arch} takes {arch.image_resolution} px images; the caption pairs are "
            f"{images.shape[-1]} px"
        )
    tokens = clip.tokenize(captions, context_length=arch.context_length)  # N x L

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = CLIP(**arch.as_kwargs())
    # channels-last convolutions: ~25% faster training steps on the CPU here
    model = model.to(memory_format=torch.channels_last)
    optimizer = _optimizer(model, cfg)
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        logger.info(f"Resuming CLIP pretraining from {ckpt_path} at step {start}")
    elif resume:
        logger.info(f"No checkpoint to resume from at {ckpt_path}: pretraining from step 0")

    model.train()
    t0 = time.perf_counter()
    bar = tqdm(
        range(start, cfg.steps),
        desc=f"pretraining CLIP {cfg.arch}",
        unit="step",
        initial=start,
        total=cfg.steps,
        disable=not progress,
        mininterval=2.0,
    )
    for step in bar:
        idx = _batch_indices(step, cfg, images.shape[0], colour_pools)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, cfg)
        batch = normalize_clip_input(images[idx]).contiguous(memory_format=torch.channels_last)
        same = keys[idx][:, None] == keys[idx][None, :] if cfg.match_same_objects else None
        loss = contrastive_loss(model, batch, tokens[idx], same)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        bar.set_postfix(
            loss=f"{loss.item():.3f}", scale=f"{model.logit_scale.exp().item():.1f}", refresh=False
        )
        if (step + 1) % cfg.checkpoint_period == 0 and step + 1 < cfg.steps:
            atomic_torch_save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": step + 1,
                    "config": dataclasses.asdict(cfg),
                },
                ckpt_path,
            )
    logger.info(f"CLIP pretraining: {cfg.steps - start} steps in {time.perf_counter() - t0:.0f} s")

    model = model.to(memory_format=torch.contiguous_format).eval()
    convert_weights(model)  # OpenAI's layout: fp16 conv / linear / projection weights
    final = os.path.join(output_dir, final_weights_name(cfg.arch))
    atomic_torch_save(model.state_dict(), final)
    logger.info(f"Wrote {final}")
    if evaluate:
        from .zero_shot import zero_shot_report

        report = zero_shot_report(final, cfg.arch, datasets_root)
        atomic_json_dump(report, os.path.join(output_dir, "zero_shot.json"), indent=1)
    return final
