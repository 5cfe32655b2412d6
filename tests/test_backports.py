"""gridclip_d2/backports.py entries that are not tested where they are used."""

import warnings

import torch

import detectron2.modeling.anchor_generator as anchor_generator

from gridclip_d2.backports import _grid_offsets, patch_grid_offsets

V06_GRID_OFFSETS = anchor_generator._create_grid_offsets  # at collection, before any model is built


def test_grid_offsets_equal_detectron2s_without_a_warning():
    """The anchor grid equals v0.6's own (``torch.meshgrid``'s default indexing, "ij"), level by
    level, and builds without the meshgrid warning; the patch is what the anchor generator calls."""
    original = V06_GRID_OFFSETS
    x, y = _grid_offsets([2, 3], 8, 0.5, torch.device("cpu"))  # rows of x, then the next row
    assert x.tolist() == [4, 12, 20] * 2 and y.tolist() == [4] * 3 + [12] * 3
    for size, stride in (([3, 5], 8), ([1, 1], 64), ([7, 2], 16)):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            x, y = _grid_offsets(size, stride, 0.5, torch.device("cpu"))
        assert not seen, [str(w.message) for w in seen]
        if original is not _grid_offsets:  # v0.6's, before any model of the session patched it
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ox, oy = original(size, stride, 0.5, torch.device("cpu"))
            assert torch.equal(x, ox) and torch.equal(y, oy)
        assert x.numel() == y.numel() == size[0] * size[1]
    patch_grid_offsets()
    assert anchor_generator._create_grid_offsets is _grid_offsets
    generator = anchor_generator.DefaultAnchorGenerator(
        sizes=[[32]], aspect_ratios=[[1.0]], strides=[8], offset=0.0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (anchors,) = generator([torch.zeros(1, 4, 2, 3)])
    assert anchors.tensor.shape == (6, 4)
