"""mean_roi_align: roi_align's mean over bins, bit-identical forward, the same gradient."""

import pytest
import torch
from torchvision.ops import roi_align

from gridclip_d2.modeling.mean_roi_align import mean_roi_align


def _rois(n, height, width, g):
    rows = []
    for i in range(n):
        for grid in (1, 2, 3):  # the alignment crops
            for r in range(grid):
                for c in range(grid):
                    rows.append(
                        [
                            i,
                            c * width / grid,
                            r * height / grid,
                            (c + 1) * width / grid,
                            (r + 1) * height / grid,
                        ]
                    )
        xy = torch.rand(2, generator=g) * torch.tensor([width, height]) - 10  # partly outside
        rows.append([i, *xy.tolist(), *(xy + torch.rand(2, generator=g) * 90 + 0.5).tolist()])
    return torch.tensor(rows)


@pytest.mark.parametrize(
    "n, d, h, w, stride", [(3, 16, 32, 32, 8), (2, 8, 2, 2, 128), (2, 4, 5, 7, 16)]
)
def test_mean_roi_align_equals_roi_align(n, d, h, w, stride):
    g = torch.Generator().manual_seed(h * w)
    x = torch.randn(n, d, h, w, generator=g, requires_grad=True)
    rois = _rois(n, h * stride, w * stride, g)
    upstream = torch.randn(len(rois), d, generator=g)
    ref = roi_align(x, rois, 7, 1.0 / stride, 0, True).mean(dim=(2, 3))
    (grad_ref,) = torch.autograd.grad((ref * upstream).sum(), x)
    out = mean_roi_align(x, rois, 7, 1.0 / stride)
    (grad,) = torch.autograd.grad((out * upstream).sum(), x)
    assert torch.equal(out, ref)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-5 * grad_ref.abs().max().item())


def test_mean_roi_align_bad_scale():
    with pytest.raises(ValueError, match="spatial scale"):
        mean_roi_align(torch.zeros(1, 1, 2, 2), torch.zeros(1, 5), 7, 0.0)
