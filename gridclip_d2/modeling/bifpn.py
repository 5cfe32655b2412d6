"""BiFPN neck (EfficientDet, Tan et al. 2020) as a Detectron2 :class:`Backbone`.

Detectron2 has no BiFPN, so this module is written by hand. It follows EfficientDet's design:

* P3..P5 are 1x1 lateral convs (+ norm) of the bottom-up features named in ``in_features``
  (e.g. res3..res5); P6 is a stride-2 max-pool of the P5 lateral, P7 a stride-2 max-pool of P6.
* Each of ``num_repeats`` layers runs a top-down then a bottom-up pass. Every node fuses its inputs
  with *fast normalised fusion*: ``w = relu(w) / (sum(relu(w)) + 1e-4)``, ``out = sum_i w_i x_i``,
  then applies swish (SiLU) and a depthwise-separable 3x3 conv followed by the norm.

Naming follows Detectron2's FPN: outputs are ``p{log2(stride)}`` (``p3``..``p7`` for strides
8..128), all with ``out_channels`` channels. Tensors are ``N x C x H x W``.
"""

import math
from typing import Dict, List

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling.backbone import Backbone

from .config_checks import check_group_norm, check_in_features

__all__ = ["BiFPN", "BiFPNLayer", "FastNormalizedFusion"]

_FUSION_EPS = 1e-4


def _resize_to(x: torch.Tensor, size) -> torch.Tensor:
    """Resize ``x`` (N x C x h x w) to ``size`` (H, W): nearest upsampling, or stride-2 max-pool
    when going down, with a nearest resize to absorb odd sizes."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] > size[0]:
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        if tuple(x.shape[-2:]) == tuple(size):
            return x
    return F.interpolate(x, size=size, mode="nearest")


class FastNormalizedFusion(nn.Module):
    """Weighted sum of same-shape inputs with non-negative weights that sum to (almost) one."""

    def __init__(self, num_inputs: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_inputs))

    def normalized_weights(self) -> torch.Tensor:
        w = F.relu(self.weight)
        return w / (w.sum() + _FUSION_EPS)

    def forward(self, inputs: List[torch.Tensor]) -> torch.Tensor:
        if len(inputs) != self.weight.numel():
            raise ValueError(f"expected {self.weight.numel()} inputs to fuse, got {len(inputs)}")
        w = self.normalized_weights()
        return sum(w[i] * x for i, x in enumerate(inputs))


class _SeparableConvBlock(nn.Module):
    """swish -> depthwise 3x3 -> pointwise 1x1 -> norm."""

    def __init__(self, channels: int, norm: str):
        super().__init__()
        self.depthwise = Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.pointwise = Conv2d(
            channels, channels, 1, bias=norm == "", norm=get_norm(norm, channels)
        )
        weight_init.c2_xavier_fill(self.pointwise)

    def forward(self, x):
        return self.pointwise(self.depthwise(F.silu(x)))


class BiFPNLayer(nn.Module):
    """One top-down + bottom-up pass over ``num_levels`` levels (index 0 = finest)."""

    def __init__(self, num_levels: int, channels: int, norm: str = "GN"):
        super().__init__()
        if num_levels < 2:
            raise ValueError(f"BiFPN needs at least 2 levels, got {num_levels}")
        self.num_levels = num_levels
        # Top-down nodes for levels L-2..0: inputs (P_i, up(td_{i+1})).
        self.td_fuse = nn.ModuleList([FastNormalizedFusion(2) for _ in range(num_levels - 1)])
        self.td_conv = nn.ModuleList(
            [_SeparableConvBlock(channels, norm) for _ in range(num_levels - 1)]
        )
        # Bottom-up nodes for levels 1..L-1: (P_i, td_i, down(out_{i-1})); the top has no td_i.
        self.bu_fuse = nn.ModuleList(
            [FastNormalizedFusion(3 if i < num_levels - 1 else 2) for i in range(1, num_levels)]
        )
        self.bu_conv = nn.ModuleList(
            [_SeparableConvBlock(channels, norm) for _ in range(num_levels - 1)]
        )

    def forward(self, feats: List[torch.Tensor]) -> List[torch.Tensor]:
        L = self.num_levels
        assert len(feats) == L, (len(feats), L)
        td = [None] * L
        td[L - 1] = feats[L - 1]
        for i in range(L - 2, -1, -1):
            k = L - 2 - i
            up = _resize_to(td[i + 1], feats[i].shape[-2:])
            td[i] = self.td_conv[k](self.td_fuse[k]([feats[i], up]))
        outs = [td[0]]
        for i in range(1, L):
            down = _resize_to(outs[i - 1], feats[i].shape[-2:])
            inputs = [feats[i], td[i], down] if i < L - 1 else [feats[i], down]
            outs.append(self.bu_conv[i - 1](self.bu_fuse[i - 1](inputs)))
        return outs


class BiFPN(Backbone):
    """BiFPN on a bottom-up :class:`Backbone`, producing ``len(in_features) + num_extra_levels``
    levels; with res3..res5 and 2 extra levels: p3..p7 at strides 8..128."""

    def __init__(
        self,
        bottom_up: Backbone,
        in_features: List[str],
        out_channels: int,
        num_repeats: int = 3,
        norm: str = "GN",
        num_extra_levels: int = 2,
    ):
        """
        Args:
            bottom_up: backbone whose ``output_shape()`` holds ``in_features``.
            in_features: bottom-up features, finest first, with strides doubling level to level.
            out_channels: channels of every output level.
            num_repeats: number of stacked BiFPN layers (>= 1).
            norm: Detectron2 norm name ("GN", "BN", "SyncBN", ... or "" for none).
            num_extra_levels: levels added above the coarsest input by stride-2 max-pooling.
        """
        super().__init__()
        if not isinstance(bottom_up, Backbone):
            raise TypeError(f"bottom_up must be a detectron2 Backbone, got {type(bottom_up)}")
        if num_repeats < 1:
            raise ValueError(
                f"BiFPN num_repeats (MODEL.BIFPN.NUM_REPEATS) must be >= 1, got {num_repeats}"
            )
        check_group_norm(norm, out_channels, "MODEL.BIFPN.NORM", "MODEL.BIFPN.OUT_CHANNELS")
        shapes = bottom_up.output_shape()
        check_in_features(in_features, shapes, "MODEL.BIFPN.IN_FEATURES", "the bottom-up backbone")
        strides = [shapes[f].stride for f in in_features]
        for a, b in zip(strides[:-1], strides[1:]):
            if b != 2 * a:
                raise ValueError(
                    f"BiFPN in_features {list(in_features)} must have strides doubling level to "
                    f"level (finest first); got {strides}"
                )
        self.bottom_up = bottom_up
        self.in_features = list(in_features)

        self.laterals = nn.ModuleList()
        for f in in_features:
            conv = Conv2d(
                shapes[f].channels,
                out_channels,
                1,
                bias=norm == "",
                norm=get_norm(norm, out_channels),
            )
            weight_init.c2_xavier_fill(conv)
            self.laterals.append(conv)
        self.num_extra_levels = num_extra_levels
        out_strides = strides + [strides[-1] * 2 ** (k + 1) for k in range(num_extra_levels)]
        self.layers = nn.ModuleList(
            [BiFPNLayer(len(out_strides), out_channels, norm) for _ in range(num_repeats)]
        )

        self._out_features = [f"p{int(math.log2(s))}" for s in out_strides]
        self._out_feature_strides = dict(zip(self._out_features, out_strides))
        self._out_feature_channels = {f: out_channels for f in self._out_features}
        self._size_divisibility = out_strides[-1]

    @property
    def size_divisibility(self):
        return self._size_divisibility

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """x: N x 3 x H x W (normalised image) -> {"p3": N x C x H/8 x W/8, ..., "p7": ...}."""
        return self.pyramid(self.bottom_up(x))

    def pyramid(self, bottom_up_features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The levels from the bottom-up features (a dict holding ``in_features``)."""
        feats = [lat(bottom_up_features[f]) for f, lat in zip(self.in_features, self.laterals)]
        for _ in range(self.num_extra_levels):
            feats.append(F.max_pool2d(feats[-1], kernel_size=3, stride=2, padding=1))
        for layer in self.layers:
            feats = layer(feats)
        return dict(zip(self._out_features, feats))

    def output_shape(self):
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }
