"""dense_decoding: ``topk_flat`` equals ``Tensor.topk``; ``batched_nms_first`` equals
``batched_nms`` cut at k."""

import pytest
import torch

from detectron2.layers import batched_nms

from gridclip_d2.modeling.dense_decoding import batched_nms_first, topk_flat


def test_topk_flat_equals_topk():
    g = torch.Generator().manual_seed(0)
    for n, k in [(6400 * 1203, 1000), (25 * 1203, 1000), (97, 10), (1000, 1000), (30075, 7)]:
        flat = torch.randperm(n, generator=g).float()  # distinct values: indices are determined
        v0, i0 = flat.topk(k, sorted=True)
        v1, i1 = topk_flat(flat, k)
        assert torch.equal(v0, v1) and torch.equal(i0, i1)


def _candidates(n: int, num_clusters: int, num_classes: int, seed: int):
    """n boxes jittered around ``num_clusters`` centres (heavy same-class overlap), distinct scores
    in descending order."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(num_clusters, 2, generator=g) * 500
    xy = centers[torch.randint(0, num_clusters, (n,), generator=g)] + torch.randn(n, 2, generator=g)
    boxes = torch.cat([xy, xy + 20 + 5 * torch.rand(n, 2, generator=g)], dim=1)
    scores = torch.arange(n, 0, -1).float() / n
    classes = torch.randint(0, num_classes, (n,), generator=g)
    return boxes, scores, classes


@pytest.mark.parametrize(
    "n, num_clusters, num_classes, survive_in_first_600",
    [
        (5000, 5000, 1203, "all"),  # LVIS-like: nearly every candidate survives
        (5000, 100, 3, "fewer than 300"),  # NMS runs on a longer prefix, then stops
        (5000, 30, 3, "fewer than 300"),  # fewer than k survive at all: the whole set
        (400, 100, 2, "all"),  # fewer candidates than the first prefix
    ],
)
def test_batched_nms_first_equals_batched_nms_cut(
    n, num_clusters, num_classes, survive_in_first_600
):
    boxes, scores, classes = _candidates(n, num_clusters, num_classes, seed=n + num_clusters)
    ref = batched_nms(boxes, scores, classes, 0.6)
    first = len(batched_nms(boxes[:600], scores[:600], classes[:600], 0.6))
    assert (first >= 300) == (survive_in_first_600 == "all") or n < 600
    for k in (300, 10, 0):
        assert torch.equal(batched_nms_first(boxes, scores, classes, 0.6, k), ref[:k]), k
    # shuffled input: the result is in score order, whatever the input order
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    got = batched_nms_first(boxes[perm], scores[perm], classes[perm], 0.6, 300)
    assert torch.equal(perm[got], ref[:300])


def test_batched_nms_first_of_nothing():
    empty = torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long)
    assert batched_nms_first(*empty, 0.6, 300).numel() == 0
