"""The mean over the bins of ``torchvision.ops.roi_align`` (aligned, adaptive sampling), with a fast
backward.

Forward: ``roi_align(x, rois, P, scale, sampling_ratio=0, aligned=True).mean((2, 3))``, unchanged
(the same values, bit for bit). Backward: torchvision's CPU kernel scatters every bilinear sample
of every bin one by one on one thread (~0.1 s per training step of the embedded default, most of
the image-level alignment's cost with a cached teacher). The mean of the samples is a separable
weighting of the feature map, ``pooled[r] = sum_{h,w} a_r[h] b_r[w] x[n_r, :, h, w] / count``,
because each bilinear sample's weight is a product of a row and a column weight (with
roi_align's clamping at the borders and its zero outside [-1, size]); so the gradient is one
matrix product per image, ``grad x[n] = grad_pooled^T (a (x) b)``: the same numbers up to float
summation order. Torchvision has no such op; written here.

Conventions: N images, D channels, H x W feature map, R regions, P x P bins per region.
"""

import math
from typing import Tuple

import torch
from torch import Tensor
from torchvision.ops import roi_align

__all__ = ["mean_roi_align", "roi_axis_weights"]


def roi_axis_weights(
    start: Tensor, extent: Tensor, length: int, bins: int
) -> Tuple[Tensor, Tensor]:
    """
    Weights of roi_align's samples along one axis (as torchvision's kernel computes them, float32).

    Args:
        start: R region starts in feature-map units (``x0 * scale - 0.5``).
        extent: R region extents in feature-map units.
        length: H or W of the feature map.
        bins: P.

    Returns:
        (R x length summed sample weights, R samples per bin along this axis)
    """
    grid = torch.ceil(extent / bins).long()  # R (sampling_ratio 0: ceil(extent / P))
    num = int(grid.max().item()) if grid.numel() else 0
    r = start.shape[0]
    weights = torch.zeros((r, length), dtype=torch.float32, device=start.device)
    if num == 0:
        return weights, grid
    bin_size = (extent / bins)[:, None, None]  # R x 1 x 1
    p = torch.arange(bins, device=start.device, dtype=torch.float32)[None, :, None]
    i = torch.arange(num, device=start.device)[None, None, :]
    g = grid[:, None, None]
    # y = start + p * bin + (i + .5) * bin / grid, in roi_align's order of float operations
    pos = (
        start[:, None, None] + p * bin_size + (i.float() + 0.5) * bin_size / g.clamp(min=1).float()
    )
    valid = ((i < g) & (pos >= -1.0) & (pos <= length)).float()  # R x P x G
    pos = pos.clamp(min=0.0)
    low = pos.long()  # truncation, pos >= 0
    at_end = low >= length - 1
    low = torch.where(at_end, torch.full_like(low, length - 1), low)
    high = torch.where(at_end, low, low + 1)
    frac = torch.where(at_end, torch.zeros_like(pos), pos - low.float())
    weights.scatter_add_(1, low.reshape(r, -1), ((1.0 - frac) * valid).reshape(r, -1))
    weights.scatter_add_(1, high.reshape(r, -1), (frac * valid).reshape(r, -1))
    return weights, grid


class _MeanRoIAlign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, rois: Tensor, bins: int, scale: float) -> Tensor:
        ctx.save_for_backward(rois)
        ctx.meta = (x.shape, x.dtype, bins, scale)
        return roi_align(x, rois, bins, spatial_scale=scale, sampling_ratio=0, aligned=True).mean(
            dim=(2, 3)
        )

    @staticmethod
    def backward(ctx, grad: Tensor):  # grad: R x D
        (rois,) = ctx.saved_tensors
        (n, d, h, w), dtype, bins, scale = ctx.meta
        boxes = rois[:, 1:].float() * scale - 0.5  # aligned: shift by half a cell
        a, gh = roi_axis_weights(boxes[:, 1], boxes[:, 3] - boxes[:, 1], h, bins)  # R x H
        b, gw = roi_axis_weights(boxes[:, 0], boxes[:, 2] - boxes[:, 0], w, bins)  # R x W
        count = (gh * gw).clamp(min=1).float() * (bins * bins)  # R
        coef = grad.float() / count[:, None]  # R x D
        grad_x = torch.zeros((n, d, h * w), dtype=torch.float32, device=grad.device)
        image = rois[:, 0].long()
        for i in image.unique().tolist():
            sel = image == i
            spatial = (a[sel][:, :, None] * b[sel][:, None, :]).reshape(-1, h * w)  # Ri x HW
            grad_x[i] = coef[sel].t() @ spatial  # D x HW
        return grad_x.view(n, d, h, w).to(dtype), None, None, None


def mean_roi_align(x: Tensor, rois: Tensor, bins: int, scale: float) -> Tensor:
    """
    Args:
        x: N x D x H x W features.
        rois: R x 5 (image index, x0, y0, x1, y1) in input pixels.
        bins: P.
        scale: 1 / stride.

    Returns:
        R x D: ``roi_align(x, rois, bins, scale, 0, aligned=True).mean((2, 3))``.
    """
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"mean_roi_align: spatial scale must be positive, got {scale}")
    return _MeanRoIAlign.apply(x, rois, int(bins), float(scale))
