"""Contrastive pretraining of a small CLIP on the synthetic image-caption pairs, its zero-shot
evaluation, and the cached model that ``MODEL.CLIP.WEIGHTS synthetic`` names."""

from .contrastive import PretrainConfig, pretrain_clip  # noqa: F401
from .synthetic_clip import SYNTHETIC_CLIP_NAME, ensure_synthetic_clip, synthetic_clip_path  # noqa: F401
from .zero_shot import zero_shot_accuracy  # noqa: F401
