"""Federated classification loss for long-tailed vocabularies (LVIS).

Idea of Detic (Zhou et al., ECCV 2022, ``detic/modeling/roi_heads/detic_fast_rcnn.py``): LVIS is
annotated federatedly, so a category absent from an image's labels is not necessarily absent from
the image. Per batch, the sigmoid classification loss is computed only on the columns of

* every class that occurs in the batch's ground truth, plus
* classes sampled without replacement with probability ``image_count ** freq_weight``,

``num_sample`` classes in all (or fewer, when fewer classes can be drawn). Neither Detectron2 nor
fvcore has this; it is written here as two small functions.

Shapes: C = number of classes; class ids are contiguous (0..C-1).
"""

from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ["fed_loss_class_weights", "sample_fed_loss_classes"]


def fed_loss_class_weights(
    image_counts: Sequence[int], freq_weight: float, allowed: Optional[Tensor] = None
) -> Tensor:
    """
    Sampling weights of the federated loss.

    Args:
        image_counts: C training-image counts per class (metadata ``image_count_per_class``).
        freq_weight: exponent applied to the counts (Detic uses 0.5).
        allowed: optional C bool mask; classes outside it get weight 0 (never sampled).

    Returns:
        C float32 weights (``image_count ** freq_weight``; 0 for classes with no image).
    """
    counts = torch.as_tensor(list(image_counts), dtype=torch.float32)  # C
    if counts.ndim != 1 or len(counts) == 0:
        raise ValueError(
            f"image_count_per_class must be a non-empty list of C counts, got {counts.shape}"
        )
    if (counts < 0).any():
        raise ValueError("image_count_per_class has negative entries")
    weights = counts.pow(float(freq_weight))
    weights[counts == 0] = 0.0  # 0 ** 0 would be 1: a class without images is never sampled
    if allowed is not None:
        if allowed.shape != weights.shape:
            raise ValueError(
                f"allowed mask has shape {tuple(allowed.shape)}, expected ({len(weights)},)"
            )
        weights = weights * allowed.to(weights.dtype)
    return weights


def sample_fed_loss_classes(
    gt_classes: Tensor,
    num_sample: int,
    weights: Tensor,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """
    Classes that take part in the classification loss of one batch.

    Args:
        gt_classes: ground-truth class ids of every instance of the batch (any shape, int).
        num_sample: number of classes in all (as ``FED_LOSS_NUM_CLASSES``); the gt classes are
            always included even when there are more of them.
        weights: C sampling weights (:func:`fed_loss_class_weights`).
        generator: optional torch random generator for the sampling.

    Returns:
        Sorted 1-D int64 tensor of unique class ids.
    """
    num_classes = len(weights)
    appeared = torch.unique(gt_classes.reshape(-1).to(device=weights.device, dtype=torch.int64))
    if len(appeared) and (appeared.min() < 0 or appeared.max() >= num_classes):
        raise ValueError(
            f"gt class ids must lie in [0, {num_classes}), "
            f"got {appeared.min().item()}..{appeared.max().item()}"
        )
    prob = weights.detach().clone().float()
    prob[appeared] = 0.0
    num_more = min(int(num_sample) - len(appeared), int((prob > 0).sum()))
    if num_more > 0:
        more = torch.multinomial(prob, num_more, replacement=False, generator=generator)
        appeared = torch.cat([appeared, more])
    return appeared.sort().values
