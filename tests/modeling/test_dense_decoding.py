"""dense_decoding.topk_flat: the top k of the per-chunk top k equals ``Tensor.topk``."""

import torch

from gridclip_d2.modeling.dense_decoding import topk_flat


def test_topk_flat_equals_topk():
    g = torch.Generator().manual_seed(0)
    for n, k in [(6400 * 1203, 1000), (25 * 1203, 1000), (97, 10), (1000, 1000), (30075, 7)]:
        flat = torch.randperm(n, generator=g).float()  # distinct values: indices are determined
        v0, i0 = flat.topk(k, sorted=True)
        v1, i1 = topk_flat(flat, k)
        assert torch.equal(v0, v1) and torch.equal(i0, i1)
