"""GridCLIP's dense head: FCOS towers whose classification branch ends in CLIP's embedding space.

Per pyramid level i (N images, C classes, D = CLIP embedding dim, Hi x Wi grid cells) the head
returns, as lists over levels:

* ``logits``      N x C x Hi x Wi: ``temperature * cos(grid embedding, text embedding) + bias``
* ``box_deltas``  N x 4 x Hi x Wi: left/top/right/bottom distances in units of the level's stride
  (``Box2BoxTransformLinear(normalize_by_size=True)``): ``exp(scale_i * x)`` with a learnable
  per-level scale, as the original FCOS. (A ReLU instead of the exp starts many locations with a
  zero-width box, where the GIoU loss has no gradient.)
* ``centerness``  N x 1 x Hi x Wi: centerness logits, on the regression tower (as FCOS)
* ``grid_embeddings`` N x D x Hi x Wi: the grid embeddings, L2-normalised per cell

The towers are written here instead of using Detectron2's ``RetinaNetHead``/``FCOSHead``: their
``norm="GN"`` builds ``GroupNorm(32, 1)`` and crashes, and their classifier is a conv with one
output per class, whereas GridCLIP's classifier is the frozen text-embedding matrix.
"""

import math
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import ShapeSpec, get_norm

from .config_checks import check_group_norm
from .inference_weights import conv_forward

__all__ = ["GridCLIPHead", "GridHeadOutputs"]


class GridHeadOutputs(NamedTuple):
    """What :class:`GridCLIPHead` returns: each field a list over levels (shapes in the module
    docstring)."""

    logits: List[Tensor]
    box_deltas: List[Tensor]
    centerness: List[Tensor]
    grid_embeddings: List[Tensor]

    def dense_predictions(self) -> List[List[Tensor]]:
        """``[logits, box_deltas, centerness]``: what Detectron2's ``DenseDetector`` decodes."""
        return [self.logits, self.box_deltas, self.centerness]


def _from_bf16(x: Tensor) -> Tensor:
    """float32 of a bfloat16 tensor (bfloat16 CPU inference, :mod:`.cpu_bf16`), else ``x``: the
    cosines, box deltas and centerness are computed and decoded in float32."""
    return x.float() if x.dtype == torch.bfloat16 else x


def _run(module: nn.Module, x: Tensor) -> Tensor:
    """``module(x)`` for a conv or a Sequential of layers, its convs on weights prepared once for
    inference (:func:`.inference_weights.conv_forward`)."""
    if isinstance(module, nn.Conv2d):
        return conv_forward(module, x)
    for layer in module:
        x = conv_forward(layer, x) if isinstance(layer, nn.Conv2d) else layer(x)
    return x


def _tower(channels: int, num_convs: int, norm: str) -> nn.Sequential:
    layers = []
    for _ in range(num_convs):
        layers.append(nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1))
        if norm:
            layers.append(get_norm(norm, channels))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _attnpool_projection(cfg):
    """(v_proj.weight, v_proj.bias, c_proj.weight, c_proj.bias) of MODEL.CLIP.WEIGHTS' attention
    pool."""
    from .clip_weights import clip_state_dict_from_cfg

    sd = clip_state_dict_from_cfg(cfg)
    p = "visual.attnpool."
    return tuple(
        sd[p + k] for k in ("v_proj.weight", "v_proj.bias", "c_proj.weight", "c_proj.bias")
    )


class GridCLIPHead(nn.Module):
    """
    Shared classification and regression towers over all levels. The classification tower is
    followed by a 3x3 (or 1x1) conv projecting to D channels (the grid embedding); ``classifier`` (a
    :class:`TextClassifier`, whose C x D text embeddings are a buffer and never trained) turns the
    normalised grid embedding into cosine similarities.
    """

    @configurable
    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        classifier: nn.Module,
        num_convs: int = 4,
        norm: str = "GN",
        prior_prob: float = 0.01,
        temperature: float = 50.0,
        learn_temperature: bool = True,
        dense_clip_levels: Sequence[int] = (),
        clip_projection: Optional[Tuple[Tensor, Tensor, Tensor, Tensor]] = None,
        embed_kernel_size: int = 3,
    ):
        """
        Args:
            input_shape: shapes of the input levels; all must have the same number of channels.
            classifier: module mapping ``... x D`` normalised embeddings to ``... x C`` cosines; it
                must expose ``embeddings`` (C x D).
            num_convs: 3x3 convs in each tower.
            norm: normalisation in the towers ("GN", "BN", "" ...; see
                ``detectron2.layers.get_norm``).
            prior_prob: initial foreground probability, sets the scalar logit bias.
            temperature: initial (or fixed) temperature multiplying the cosines.
            learn_temperature: learn the temperature (log-parametrised) or keep it fixed.
            dense_clip_levels: indices of the levels whose grid embedding also receives the
                backbone's dense CLIP embedding (``forward(..., dense_embedding=...)``).
            clip_projection: CLIP's attention-pool ``(v_proj.weight, v_proj.bias, c_proj.weight,
                c_proj.bias)``. When given, the grid-embedding projection is a 1x1 conv to res5's
                width (random) followed by a 1x1 conv to D initialised with ``c_proj o v_proj``
                (the map from res5 features into CLIP's joint space); otherwise it is one random
                ``embed_kernel_size`` x ``embed_kernel_size`` conv to D.
            embed_kernel_size: 3 (the paper's head) or 1 (a lighter head: at 256 channels and
                D = 1024 the 3x3 embedding conv is about a sixth of the detector's arithmetic).
        """
        super().__init__()
        channels = {s.channels for s in input_shape}
        if len(channels) != 1:
            raise ValueError(
                f"GridCLIPHead needs the same channels on every level, got {sorted(channels)}"
            )
        in_channels = channels.pop()
        check_group_norm(
            norm, in_channels, "MODEL.GRIDCLIP.HEAD_NORM", "the neck (MODEL.FPN/BIFPN.OUT_CHANNELS)"
        )
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"MODEL.GRIDCLIP.PRIOR_PROB must lie in (0, 1), got {prior_prob}")
        if temperature <= 0:
            raise ValueError(f"MODEL.GRIDCLIP.TEMPERATURE must be positive, got {temperature}")
        self.num_levels = len(input_shape)
        self.dense_clip_levels = sorted(set(int(i) for i in dense_clip_levels))
        for i in self.dense_clip_levels:
            if not 0 <= i < self.num_levels:
                raise ValueError(
                    f"dense_clip_levels index {i} out of range for {self.num_levels} levels"
                )

        if embed_kernel_size not in (1, 3):
            raise ValueError(
                f"MODEL.GRIDCLIP.EMBED_KERNEL_SIZE must be 1 or 3, got {embed_kernel_size}"
            )
        self.classifier = classifier
        embed_dim = int(classifier.embeddings.shape[1])

        self.cls_subnet = _tower(in_channels, num_convs, norm)
        self.bbox_subnet = _tower(in_channels, num_convs, norm)
        if clip_projection is None:
            self.embed = nn.Conv2d(
                in_channels,
                embed_dim,
                kernel_size=embed_kernel_size,
                padding=embed_kernel_size // 2,
            )
        else:
            v_w, v_b, c_w, c_b = (t.detach().float() for t in clip_projection)
            if c_w.shape[0] != embed_dim or v_w.shape[0] != c_w.shape[1]:
                raise ValueError(
                    f"CLIP attention-pool projections of shapes {tuple(v_w.shape)}, "
                    f"{tuple(c_w.shape)} "
                    f"do not map res5 into the classifier's {embed_dim}-d space"
                )
            width = v_w.shape[0]
            self.embed = nn.Sequential(
                nn.Conv2d(in_channels, width, kernel_size=1),
                nn.Conv2d(width, embed_dim, kernel_size=1),
            )
        self.bbox_pred = nn.Conv2d(in_channels, 4, kernel_size=3, stride=1, padding=1)
        self.ctrness = nn.Conv2d(in_channels, 1, kernel_size=3, stride=1, padding=1)
        for module in [self.cls_subnet, self.bbox_subnet, self.embed, self.bbox_pred, self.ctrness]:
            for layer in module.modules():
                if isinstance(layer, nn.Conv2d):
                    nn.init.normal_(layer.weight, mean=0, std=0.01)
                    nn.init.constant_(layer.bias, 0)
        if clip_projection is not None:
            # c_proj(v_proj(x)) = (Wc Wv) x + (Wc bv + bc): one linear map, as a 1x1 conv
            out = self.embed[1]
            out.weight.data.copy_((c_w @ v_w)[:, :, None, None])
            out.bias.data.copy_(c_w @ v_b + c_b)
        # Per-level learnable scale of the box regression (FCOS).
        self.scales = nn.Parameter(torch.ones(self.num_levels))

        log_t = torch.tensor(math.log(temperature), dtype=torch.float32)
        if learn_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)
        # One scalar bias for every class (RetinaNet's prior), so the vocabulary can change.
        self.logit_bias = nn.Parameter(torch.tensor(-math.log((1 - prior_prob) / prior_prob)))

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec], classifier: nn.Module):
        in_features = list(cfg.MODEL.GRIDCLIP.IN_FEATURES)
        if cfg.MODEL.GRIDCLIP.EMBED_INIT not in ("random", "clip"):
            raise ValueError(
                "MODEL.GRIDCLIP.EMBED_INIT must be 'random' or 'clip', "
                f"got {cfg.MODEL.GRIDCLIP.EMBED_INIT!r}"
            )
        dense_levels = []
        for name in cfg.MODEL.GRIDCLIP.DENSE_CLIP_LEVELS:
            if name not in in_features:
                raise ValueError(
                    f"MODEL.GRIDCLIP.DENSE_CLIP_LEVELS names {name!r}, which is not one of "
                    f"MODEL.GRIDCLIP.IN_FEATURES {in_features}"
                )
            dense_levels.append(in_features.index(name))
        return {
            "input_shape": input_shape,
            "classifier": classifier,
            "num_convs": cfg.MODEL.GRIDCLIP.NUM_CONVS,
            "norm": cfg.MODEL.GRIDCLIP.HEAD_NORM,
            "prior_prob": cfg.MODEL.GRIDCLIP.PRIOR_PROB,
            "temperature": cfg.MODEL.GRIDCLIP.TEMPERATURE,
            "learn_temperature": cfg.MODEL.GRIDCLIP.LEARN_TEMPERATURE,
            "dense_clip_levels": dense_levels,
            "clip_projection": _attnpool_projection(cfg)
            if cfg.MODEL.GRIDCLIP.EMBED_INIT == "clip"
            else None,
            "embed_kernel_size": cfg.MODEL.GRIDCLIP.EMBED_KERNEL_SIZE,
        }

    @property
    def temperature(self) -> Tensor:
        # clamped at 100, as CLIP clamps its logit scale: a learned temperature cannot run away
        return self.log_temperature.clamp(max=math.log(100.0)).exp()

    @property
    def embed_dim(self) -> int:
        return self.classifier.embeddings.shape[1]

    def _scaled_text(self, temperature: Tensor, dtype: torch.dtype) -> Tensor:
        """``(temperature * text)^T``: D x C, the L2-normalised text embeddings scaled, in
        ``dtype`` (computed once per forward, for every level)."""
        return (self.classifier.embeddings.to(dtype) * temperature.to(dtype)).t()

    def _inference_logits(self, emb: Tensor, scaled_text: Tensor) -> Tensor:
        """``temperature * cos + bias`` of L2-normalised grid embeddings (N x D x H x W) in one
        matrix product, ``bias + emb @ (temperature * text)^T`` (``scaled_text``, D x C):
        training's path (normalise again, multiply, scale, shift: four passes over N x H x W x C)
        up to float rounding. Returns N x C x H x W, laid out as N x H x W x C (what the decoding
        reads)."""
        n, d, h, w = emb.shape
        flat = emb.permute(0, 2, 3, 1).reshape(n * h * w, d)  # NHW x D
        bias = self.logit_bias.to(emb.dtype).expand(scaled_text.shape[1])
        with torch.autocast("cpu", enabled=False):  # float32 under bfloat16 CPU inference
            out = torch.addmm(bias, flat, scaled_text)  # NHW x C
        return out.view(n, h, w, -1).permute(0, 3, 1, 2)

    def forward(self, features: List[Tensor], dense_embedding: Optional[Tensor] = None):
        """
        Args:
            features: one N x Cin x Hi x Wi tensor per level.
            dense_embedding: N x D x h x w dense CLIP embedding, required when the head has
                ``dense_clip_levels``; resized bilinearly to each such level and added,
                L2-normalised, to the projected embedding before the final normalisation.

        Returns:
            :class:`GridHeadOutputs` (logits, box_deltas, centerness, grid_embeddings), each a list
            over levels (see the module docstring for shapes).
        """
        if len(features) != self.num_levels:
            raise ValueError(
                f"GridCLIPHead was built for {self.num_levels} levels, got {len(features)}"
            )
        if self.dense_clip_levels and dense_embedding is None:
            raise ValueError("GridCLIPHead has dense_clip_levels but no dense_embedding was given")
        temperature = self.temperature
        scaled_text = None  # inference: D x C, the same for every level
        logits, box_deltas, centerness, grid_embeddings = [], [], [], []
        for i, x in enumerate(features):
            emb = _from_bf16(_run(self.embed, _run(self.cls_subnet, x)))  # N x D x Hi x Wi
            if i in self.dense_clip_levels:
                dense = F.interpolate(
                    dense_embedding.to(emb.dtype),
                    size=emb.shape[-2:],
                    mode="bilinear",
                    align_corners=False,
                )
                emb = emb + F.normalize(dense, dim=1)
            emb = F.normalize(emb, dim=1)
            if self.training:
                cos = self.classifier(emb.permute(0, 2, 3, 1))  # N x Hi x Wi x C
                logits.append(
                    cos.permute(0, 3, 1, 2) * temperature + self.logit_bias
                )  # N x C x Hi x Wi
            else:
                if scaled_text is None:
                    scaled_text = self._scaled_text(temperature, emb.dtype)
                logits.append(self._inference_logits(emb, scaled_text))
            grid_embeddings.append(emb)

            reg = _run(self.bbox_subnet, x)
            # exp of a clamped exponent: e^8 strides is far beyond any box, and exp cannot overflow.
            deltas = _from_bf16(conv_forward(self.bbox_pred, reg))  # N x 4 x Hi x Wi
            box_deltas.append(torch.exp((deltas * self.scales[i]).clamp(max=8.0)))
            centerness.append(_from_bf16(conv_forward(self.ctrness, reg)))  # N x 1 x Hi x Wi
        return GridHeadOutputs(logits, box_deltas, centerness, grid_embeddings)
