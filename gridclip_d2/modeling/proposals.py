"""Class-agnostic proposals from the detector's own dense predictions: the regions of the
image-level alignment in ViLD's form.

ViLD distils CLIP into the embeddings of proposals from a class-agnostic RPN. A one-stage detector
has no RPN, but every location predicts a box and C class scores: ranked by the score FCOS ranks
detections with, ``sqrt(sigmoid(max over classes of the logit) * sigmoid(centerness))``, decoded,
clipped and de-duplicated by NMS, the top ``num_proposals`` boxes of an image are where the
detector believes objects are, whatever their class (the novel ones included: their text
embeddings are rows of the classifier, and the box regression does not depend on the class).

With ``known_classes`` (the classes of the classification loss: the training set's base classes),
each box also gets the detector's highest probability for one of them at its location, the
``known`` score: high where a trained class explains the object, low on objects no training box
showed (what the image-level alignment is for).

Ground truth is never read: the boxes are a function of the predictions alone, computed without
gradient (as ViLD's proposals, they are inputs to the loss, not outputs it trains).
"""

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torchvision.ops import nms

from detectron2.structures import Boxes

__all__ = ["class_agnostic_proposals"]


@torch.no_grad()
def class_agnostic_proposals(
    anchors: Sequence[Boxes],
    pred_logits: Sequence[Tensor],
    pred_deltas: Sequence[Tensor],
    pred_centerness: Sequence[Tensor],
    image_sizes: Sequence[Tuple[int, int]],
    box2box_transform,
    num_proposals: int,
    nms_thresh: float = 0.5,
    min_size: float = 4.0,
    topk_candidates: int = 1000,
    known_classes: Optional[Tensor] = None,
) -> Tuple[List[Tensor], Optional[List[Tensor]]]:
    """
    Args:
        anchors: per level, Ri anchor boxes (FCOS: points as boxes), shared by the images.
        pred_logits, pred_deltas, pred_centerness: per level, N x Ri x C, N x Ri x 4, N x Ri x 1.
        image_sizes: per image, (height, width) of the input (boxes are clipped to it).
        box2box_transform: the detector's (``apply_deltas(deltas, anchors)``).
        num_proposals: K, boxes kept per image (fewer when fewer survive).
        nms_thresh: IoU above which a lower-scored box is dropped.
        min_size: boxes with a side shorter than this (input pixels) are dropped.
        topk_candidates: best-scored locations decoded per image before NMS.
        known_classes: C bool, the classes whose probability makes the ``known`` score.

    Returns:
        boxes: per image, K_i x 4 XYXY boxes in input pixels, best first (K_i <= K), float32.
        known: per image, K_i probabilities in [0, 1] (None without ``known_classes``).
    """
    all_anchors = torch.cat([a.tensor for a in anchors])  # R x 4
    # N x R: the detection score of each location's best class
    scores = torch.cat(
        [
            (logits.amax(dim=2).float().sigmoid() * ctr.squeeze(2).float().sigmoid()).sqrt()
            for logits, ctr in zip(pred_logits, pred_centerness)
        ],
        dim=1,
    )
    deltas = torch.cat(list(pred_deltas), dim=1).float()  # N x R x 4
    known_prob = None
    if known_classes is not None:  # N x R: best probability of a known class
        known_prob = torch.cat(
            [logits[:, :, known_classes].amax(dim=2).float().sigmoid() for logits in pred_logits],
            dim=1,
        )
    out, known = [], []
    for i, (height, width) in enumerate(image_sizes):
        top = scores[i].topk(min(topk_candidates, scores.shape[1])).indices
        boxes = Boxes(box2box_transform.apply_deltas(deltas[i, top], all_anchors[top]))
        boxes.clip((height, width))
        nonempty = boxes.nonempty(threshold=min_size)
        top, boxes = top[nonempty], boxes.tensor[nonempty]
        keep = nms(boxes, scores[i, top], nms_thresh)[:num_proposals]
        out.append(boxes[keep].detach())
        if known_prob is not None:
            known.append(known_prob[i, top[keep]])
    return out, (known if known_prob is not None else None)
