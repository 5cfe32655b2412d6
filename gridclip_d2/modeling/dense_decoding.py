"""Decoding one pyramid level's dense predictions into detections, faster than Detectron2's
``DenseDetector._decode_per_level_predictions`` with the same result (see :func:`decode_level`)."""

from typing import Optional, Tuple

import torch
from torch import Tensor

from detectron2.layers import batched_nms
from detectron2.structures import Boxes, Instances

__all__ = ["batched_nms_first", "candidate_rows", "decode_level", "topk_flat"]


def topk_flat(flat: Tensor, k: int, max_chunks: int = 16) -> Tuple[Tensor, Tensor]:
    """``flat.topk(k, sorted=True)`` of a 1-d tensor, as the top k of the per-chunk top k.

    PyTorch's CPU top-k runs a 1-d tensor on one thread; viewed as m equal rows (m divides
    ``len(flat)``), the rows' top k run in parallel and hold every element of the global top k.
    The same values and, for distinct values, the same indices (among equal values at the k-th
    place, either may be kept, as with any top-k).
    """
    n = flat.numel()
    chunks = next((m for m in range(min(max_chunks, n // max(4 * k, 1)), 1, -1) if n % m == 0), 1)
    if chunks == 1 or flat.device.type != "cpu":
        return flat.topk(k, sorted=True)
    size = n // chunks
    values, idxs = flat.view(chunks, size).topk(k, dim=1, sorted=False)  # m x k
    idxs = idxs + torch.arange(0, n, size, device=flat.device)[:, None]
    values, pick = values.reshape(-1).topk(k, sorted=True)
    return values, idxs.reshape(-1)[pick]


# relative slack on the bound of candidate_rows: vectorised sigmoid/sqrt are faithful to within an
# ulp or two (2^-23 relative), not exactly monotonic; 1e-5 keeps every row that rounding could put
# above the bound
_BOUND_SLACK = 1e-5


def candidate_rows(
    logits: Tensor, centerness: Tensor, score_thresh: float, topk_candidates: int
) -> Optional[Tensor]:
    """Indices of the locations (rows) that can hold one of the level's top ``topk_candidates``
    scores above ``score_thresh``, or None for all of them.

    A location's scores ``sqrt(sigmoid(logit) * sigmoid(centerness))`` are at most its highest
    (the one of its highest logit), so a location whose highest is below the k-th highest of all
    locations' highest, or below the threshold, has no score among the top k above the threshold.
    One pass over the R x C logits then spares the score arithmetic and the top-k over all of
    them: at 640x640, P3 has 6400 locations x 1203 classes (7.7M scores) for k = 1000.

    Args:
        logits: R x C class logits.
        centerness: R x 1 centerness logits.
    """
    num_rows, num_classes = logits.shape
    if torch.jit.is_tracing():  # the rows depend on the data: a traced graph takes all of them
        return None
    if num_classes == 0 or (num_rows <= 2 * topk_candidates and score_thresh < 0.01):
        return None  # too few locations to leave many out
    best = logits.amax(dim=1, keepdim=True).sigmoid_().mul_(centerness.sigmoid()).sqrt_()
    best = best.view(-1)  # R: each location's highest score
    bound = score_thresh
    if num_rows > topk_candidates:
        bound = max(bound, best.topk(topk_candidates, sorted=False).values.min().item())
    keep = best >= bound * (1.0 - _BOUND_SLACK)
    if bool(keep.all()):
        return None
    return keep.nonzero().squeeze(1)


def decode_level(
    box2box_transform,
    anchors: Boxes,
    pred_scores: Tensor,
    pred_deltas: Tensor,
    score_thresh: float,
    topk_candidates: int,
    image_size: Tuple[int, int],
) -> Instances:
    """The top ``topk_candidates`` of a level's location x class scores above ``score_thresh``,
    with their boxes (``box2box_transform`` applied to the anchors) clipped to ``image_size``.

    Args:
        anchors: Ri anchor boxes of the level.
        pred_scores: Ri x C scores in [0, 1].
        pred_deltas: Ri x 4 box deltas.
    """
    num_classes = pred_scores.shape[1]
    flat = pred_scores.reshape(-1)
    num_topk = min(topk_candidates, flat.numel())
    scores, idxs = topk_flat(flat, num_topk)  # descending
    keep = scores > score_thresh
    scores, idxs = scores[keep], idxs[keep]
    anchor_idxs = torch.div(idxs, num_classes, rounding_mode="floor")
    classes_idxs = idxs - anchor_idxs * num_classes
    pred_boxes = box2box_transform.apply_deltas(
        pred_deltas[anchor_idxs], anchors.tensor[anchor_idxs]
    )
    pred_boxes = Boxes(pred_boxes)
    pred_boxes.clip(image_size)
    return Instances(image_size, pred_boxes=pred_boxes, scores=scores, pred_classes=classes_idxs)


def batched_nms_first(
    boxes: Tensor, scores: Tensor, classes: Tensor, iou_threshold: float, k: int
) -> Tensor:
    """``batched_nms(boxes, scores, classes, iou_threshold)[:k]``, the indices of the k best boxes
    that survive per-class NMS, from NMS over the best-scoring boxes only.

    Greedy NMS keeps a box unless a kept box of its class with a higher score overlaps it, so the
    boxes kept among the m best-scoring are exactly the kept boxes of the whole set that are among
    those m; once they are k or more, no lower-scoring box can be among the first k. This runs NMS
    on the best 2k boxes, then 8k, ... until k survive or every box was taken. With 1203 classes
    few candidates overlap one of their own class, and 5000 candidates per image cost torchvision
    a per-class loop (~30 ms on 2 CPU cores) where the best 600 cost one call (~1 ms).
    (Equal scores at the cut may be ordered either way, as in any NMS.) Traced (export): plain
    ``batched_nms`` then the cut.
    """
    n = scores.numel()
    if torch.jit.is_tracing():  # a traced graph cannot hold the data-dependent loop
        return batched_nms(boxes, scores, classes, iou_threshold)[:k]
    if k <= 0:
        return torch.zeros(0, dtype=torch.int64, device=scores.device)
    order = None
    m = 2 * k
    while m < n:
        if order is None:
            order = torch.sort(scores, descending=True, stable=True).indices
        best = order[:m]
        keep = batched_nms(boxes[best], scores[best], classes[best], iou_threshold)
        if len(keep) >= k:
            return best[keep[:k]]
        m *= 4
    return batched_nms(boxes, scores, classes, iou_threshold)[:k]
