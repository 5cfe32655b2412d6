"""Which classes take part in ``loss_cls``, batch by batch, and the focal loss's inputs on them.

Two rules, applied together:

* novel classes (the training set's metadata ``novel_class_ids``, with
  MODEL.GRIDCLIP.IGNORE_NOVEL_CLASSES) never take part: their text embeddings are not pushed away
  from the grid, so they stay where CLIP put them;
* with MODEL.GRIDCLIP.USE_FED_LOSS, only the batch's ground-truth classes plus classes sampled by
  image frequency take part (:mod:`.fed_loss`, LVIS's federated annotation).

Shapes: N images, R locations, C classes, C' classes taking part.
"""

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .fed_loss import fed_loss_class_weights, sample_fed_loss_classes

__all__ = ["LossColumns"]


class LossColumns(nn.Module):
    """The class columns of ``loss_cls`` (no parameters; its buffers are not saved)."""

    def __init__(
        self,
        num_classes: int,
        novel_class_ids: Sequence[int] = (),
        use_fed_loss: bool = False,
        fed_loss_num_classes: int = 50,
        image_count_per_class: Optional[Sequence[int]] = None,
        fed_loss_freq_weight: float = 0.5,
    ):
        """
        Args:
            num_classes: C, the classes of the vocabulary the model trains with.
            novel_class_ids: classes left out of the loss (never pushed down).
            use_fed_loss: restrict the loss to the federated-loss classes of each batch.
            fed_loss_num_classes: number of classes per batch in the federated loss.
            image_count_per_class: C training-image counts (federated-loss sampling weights);
                None when the model is built without them (evaluation, the demo): training with
                the federated loss then fails with a message saying what is missing.
            fed_loss_freq_weight: exponent of the counts.
        """
        super().__init__()
        self.num_classes = int(num_classes)
        allowed = torch.ones(num_classes, dtype=torch.bool)  # True = takes part in loss_cls
        for c in novel_class_ids:
            if not 0 <= int(c) < num_classes:
                raise ValueError(f"novel class id {c} out of range for {num_classes} classes")
            allowed[int(c)] = False
        self.register_buffer("class_mask", allowed, persistent=False)
        self.use_fed_loss = bool(use_fed_loss)
        self.fed_loss_num_classes = int(fed_loss_num_classes)
        weights = None
        if self.use_fed_loss and image_count_per_class is not None:
            if len(image_count_per_class) != num_classes:
                raise ValueError(
                    "MODEL.GRIDCLIP.USE_FED_LOSS needs the training set's metadata "
                    f"'image_count_per_class' with {num_classes} entries, got "
                    f"{len(image_count_per_class)}"
                )
            weights = fed_loss_class_weights(image_count_per_class, fed_loss_freq_weight, allowed)
        self.register_buffer("fed_loss_weights", weights, persistent=False)  # None: no counts

    def columns(self, pos_labels: Tensor) -> Optional[Tensor]:
        """Class ids taking part in ``loss_cls`` for a batch whose positive locations have the
        classes ``pos_labels`` (None = all classes)."""
        if self.use_fed_loss:
            if self.fed_loss_weights is None:
                raise ValueError(
                    "MODEL.GRIDCLIP.USE_FED_LOSS needs the training set's metadata "
                    "'image_count_per_class' (training images per class), which the model was "
                    "built without: the training set has none (for LVIS: run "
                    "datasets/prepare_lvis_base.py, which writes the counts), or its classes are "
                    "not the model's vocabulary"
                )
            columns = sample_fed_loss_classes(
                pos_labels, self.fed_loss_num_classes, self.fed_loss_weights
            )
            return columns[self.class_mask[columns]]
        if bool(self.class_mask.all()):
            return None
        return self.class_mask.nonzero().squeeze(1)

    def forward(self, logits: Tensor, gt_labels: Tensor, pos_mask: Tensor) -> Tuple[Tensor, Tensor]:
        """
        Args:
            logits: N x R x C classification logits.
            gt_labels: N x R class ids (C = background).
            pos_mask: N x R, True at locations assigned to an object.

        Returns:
            the logits' columns taking part (N x R x C') and their one-hot targets (N x R x C').
        """
        pos_labels = gt_labels[pos_mask]  # P
        columns = self.columns(pos_labels)
        column_of_class = torch.arange(self.num_classes, device=logits.device)
        if columns is not None:
            logits = logits[:, :, columns]  # N x R x C'
            column_of_class = torch.full_like(column_of_class, -1)
            column_of_class[columns] = torch.arange(len(columns), device=logits.device)
        # One-hot targets built by scatter: F.one_hot over C + 1 int64 columns is ~8x the
        # logits' memory.
        targets = torch.zeros_like(logits)  # N x R x C'
        img_idx, anchor_idx = pos_mask.nonzero(as_tuple=True)
        cols = column_of_class[pos_labels]
        keep = cols >= 0
        targets[img_idx[keep], anchor_idx[keep], cols[keep]] = 1.0
        return logits, targets
