"""GridCLIP meta-architecture: an FCOS detector whose classifier is a frozen CLIP text-embedding
matrix.

Training losses (dict keys): ``loss_cls`` (sigmoid focal loss on the text logits: grid-level
alignment), ``loss_box_reg`` (GIoU), ``loss_quality`` (centerness BCE) and, when
``MODEL.GRIDCLIP.IMAGE_ALIGN.ENABLED``, ``loss_image_align`` (image-level alignment). Detection
losses are divided by FCOS's moving average of the number of positive locations.

Conventions: N images, R = sum over levels of Hi x Wi locations (one anchor point per location),
C classes of the current vocabulary, D = CLIP embedding dim. Class ids are contiguous and index the
vocabulary the model currently holds, ``GridCLIP.vocabulary``: the names it was built with (from
its config alone: ``gridclip_d2.vocabulary.model_vocabulary``) until :meth:`GridCLIP.set_vocabulary`
replaces them.
"""

import functools
import logging
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from fvcore.nn import sigmoid_focal_loss_jit
from torch import Tensor, nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.box_regression import _dense_box_regression_loss
from detectron2.modeling.meta_arch.fcos import FCOS
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage

from ..backports import patch_grid_offsets
from ..vocabulary import model_vocabulary, training_metadata
from .alignment import ImageAlignment
from .clip_text import text_embeddings_from_cfg
from .config_checks import check_in_features
from .cpu_bf16 import resolve_cpu_bf16
from .dense_decoding import batched_nms_first, candidate_rows, decode_level
from .grid_head import GridCLIPHead, GridHeadOutputs
from .inference_weights import clear_prepared_weights
from .loss_columns import LossColumns
from .necks import DENSE_CLIP
from .proposals import class_agnostic_proposals
from .text_classifier import TextClassifier, vocabulary_embeddings

__all__ = ["GridCLIP"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class GridCLIP(FCOS):
    """
    FCOS (Detectron2's label assignment with centre sampling, GIoU box loss, centerness targets and
    decoding) with :class:`GridCLIPHead`, an optional image-level alignment loss, class masks for
    the classification loss (novel classes, federated loss: :class:`.LossColumns`) and a
    vocabulary that can be swapped at inference (:meth:`set_vocabulary`).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        head: GridCLIPHead,
        head_in_features: List[str],
        num_classes: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        image_alignment: Optional[nn.Module] = None,
        encode_vocabulary: Optional[Callable[[List[str]], Tensor]] = None,
        novel_class_ids: Sequence[int] = (),
        use_fed_loss: bool = False,
        fed_loss_num_classes: int = 50,
        image_count_per_class: Optional[Sequence[int]] = None,
        fed_loss_freq_weight: float = 0.5,
        input_format: str = "RGB",
        vocabulary: Optional[Sequence[str]] = None,
        cpu_bf16: bool = False,
        **fcos_kwargs,
    ):
        """
        Args:
            backbone: a Detectron2 backbone giving ``head_in_features``; with
                ``head.dense_clip_levels`` also ``"dense_clip"`` (:data:`.necks.DENSE_CLIP`,
                N x D x h x w).
            head: the :class:`GridCLIPHead`; its classifier holds the C x D text embeddings.
            head_in_features: backbone outputs fed to the head, finest first.
            num_classes: C, number of rows of the head's text embeddings.
            image_alignment: ``ImageAlignment`` module (``loss_image_align``) or None.
            encode_vocabulary: names -> C x D embeddings, used by :meth:`set_vocabulary` with names.
            novel_class_ids: classes left out of the classification loss (never pushed down).
            use_fed_loss: restrict the classification loss to the federated-loss classes.
            fed_loss_num_classes: number of classes per batch in the federated loss.
            image_count_per_class: C training-image counts (federated-loss sampling weights).
            fed_loss_freq_weight: exponent of the counts.
            input_format: "RGB"; only used to show training images.
            vocabulary: the C class names (``self.vocabulary``: what predicted class ids index).
            cpu_bf16: CPU inference with the convolutions in bfloat16 (:mod:`.cpu_bf16`; the
                caller checks that the CPU has the units, as ``from_config`` does).
            fcos_kwargs: the remaining arguments of Detectron2's :class:`FCOS`
                (center_sampling_radius, focal_loss_alpha/gamma, test_score_thresh,
                test_topk_candidates, test_nms_thresh, max_detections_per_image,
                box2box_transform).
        """
        patch_grid_offsets()  # FCOS's points without v0.6's meshgrid warning (backports.py)
        super().__init__(
            backbone=backbone,
            head=head,
            head_in_features=head_in_features,
            num_classes=num_classes,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            **fcos_kwargs,
        )
        if head.classifier.embeddings.shape[0] != num_classes:
            raise ValueError(
                f"num_classes={num_classes} but the head's classifier has "
                f"{head.classifier.embeddings.shape[0]} text embeddings"
            )
        shapes = backbone.output_shape()
        self.strides = [shapes[f].stride for f in self.head_in_features]
        if head.dense_clip_levels and DENSE_CLIP not in shapes:
            raise ValueError(
                f"MODEL.GRIDCLIP.DENSE_CLIP_LEVELS needs a backbone with a {DENSE_CLIP!r} output "
                "(build_clip_resnet_fpn_backbone or build_clip_resnet_bifpn_backbone); it gives "
                f"{list(shapes)}"
            )
        self.image_alignment = image_alignment
        self.encode_vocabulary = encode_vocabulary
        self.input_format = input_format
        self.cpu_bf16 = bool(cpu_bf16)
        if vocabulary is not None and len(vocabulary) != num_classes:
            raise ValueError(
                f"num_classes={num_classes} but the vocabulary has {len(vocabulary)} names"
            )
        self.vocabulary: Optional[List[str]] = (
            None if vocabulary is None else [str(n) for n in vocabulary]
        )

        self.loss_columns = LossColumns(
            num_classes,
            novel_class_ids,
            use_fed_loss,
            fed_loss_num_classes,
            image_count_per_class,
            fed_loss_freq_weight,
        )

    @classmethod
    def from_config(cls, cfg):
        if cfg.INPUT.FORMAT != "RGB":
            raise ValueError(
                "GridCLIP's CLIP backbone takes RGB images: INPUT.FORMAT must be 'RGB', got "
                f"{cfg.INPUT.FORMAT!r}"
            )
        g = cfg.MODEL.GRIDCLIP
        vocabulary = model_vocabulary(cfg)
        names, names_source = list(vocabulary.names), vocabulary.source
        metadata = training_metadata(cfg, names)
        image_count_per_class = (
            metadata.get("image_count_per_class", None) if metadata is not None else None
        )
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        in_features = list(cfg.MODEL.GRIDCLIP.IN_FEATURES)
        check_in_features(
            in_features, shapes, "MODEL.GRIDCLIP.IN_FEATURES", f"backbone {cfg.MODEL.BACKBONE.NAME}"
        )
        classifier = TextClassifier(
            cfg,
            names=names,
            names_source=names_source,
            embeddings_file=vocabulary.embeddings_file,
        )
        head = GridCLIPHead(cfg, [shapes[f] for f in in_features], classifier=classifier)
        novel = (
            list(metadata.get("novel_class_ids", []))
            if metadata is not None and g.IGNORE_NOVEL_CLASSES
            else []
        )
        logger.info(
            "GridCLIP: %d classes from %s; in training: %d novel left out of loss_cls, "
            "federated loss %s, image-level alignment %s",
            len(names),
            names_source,
            len(novel),
            "on" if g.USE_FED_LOSS else "off",
            "on" if g.IMAGE_ALIGN.ENABLED else "off",
        )
        return {
            "backbone": backbone,
            "head": head,
            "head_in_features": in_features,
            "num_classes": len(names),
            "vocabulary": names,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "image_alignment": ImageAlignment(cfg) if g.IMAGE_ALIGN.ENABLED else None,
            "encode_vocabulary": functools.partial(text_embeddings_from_cfg, cfg.clone()),
            "novel_class_ids": novel,
            "use_fed_loss": g.USE_FED_LOSS,
            "fed_loss_num_classes": g.FED_LOSS_NUM_CLASSES,
            "image_count_per_class": image_count_per_class,
            "fed_loss_freq_weight": g.FED_LOSS_FREQ_WEIGHT,
            "input_format": cfg.INPUT.FORMAT,
            "center_sampling_radius": g.CENTER_SAMPLING_RADIUS,
            "focal_loss_alpha": g.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": g.FOCAL_LOSS_GAMMA,
            "test_score_thresh": g.SCORE_THRESH_TEST,
            "test_topk_candidates": g.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": g.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "cpu_bf16": resolve_cpu_bf16(g.CPU_BF16, cfg.MODEL.DEVICE),
        }

    def train(self, mode: bool = True) -> "GridCLIP":
        """``nn.Module.train``; back to training, the conv weights prepared for inference
        (:mod:`.inference_weights`, one more copy of them) are let go until the next evaluation.
        The frozen teacher keeps its own: it stays in eval mode."""
        if mode:
            teacher = getattr(getattr(self, "image_alignment", None), "teacher", None)
            skip = set(teacher.modules()) if teacher is not None else set()
            clear_prepared_weights(m for m in self.modules() if m not in skip)
        return super().train(mode)

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: List[Dict[str, Tensor]]):
        """
        The steps of ``DenseDetector.forward``, plus two things it cannot pass along: the
        backbone's dense CLIP embedding (its ``"dense_clip"`` output) goes to the head, and the
        batched inputs (``align_boxes``, ``teacher_images``, ``image_id``) go to the image-level
        alignment loss.

        Returns: a dict of losses in training; in inference, one ``{"instances": Instances}`` per
        image, resized to the input's "height" x "width".
        """
        images = self.preprocess_image(batched_inputs)
        bf16 = self.cpu_bf16 and not self.training and images.tensor.device.type == "cpu"
        # the head returns float32 outputs either way (bfloat16: the convolutions only)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            backbone_features = self.backbone(self._inference_layout(images.tensor))
            features = [backbone_features[f] for f in self.head_in_features]
            outputs = self.head(features, backbone_features.get(DENSE_CLIP))

        if self.training:
            missing = [i for i, x in enumerate(batched_inputs) if "instances" not in x]
            if missing:
                raise ValueError(
                    "GridCLIP training needs 'instances' in every input; "
                    f"inputs {missing} lack them"
                )
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
            return self.forward_training(images, features, outputs, gt_instances, batched_inputs)

        results = self.forward_inference(images, features, outputs.dense_predictions())
        processed_results = []
        for results_per_image, input_per_image, image_size in zip(
            results, batched_inputs, images.image_sizes
        ):
            height = input_per_image.get("height", image_size[0])
            width = input_per_image.get("width", image_size[1])
            processed_results.append(
                {"instances": detector_postprocess(results_per_image, height, width)}
            )
        return processed_results

    def _inference_layout(self, x: Tensor) -> Tensor:
        """N x 3 x H x W images, channels-last for CPU inference: oneDNN's own layout for
        convolutions, which otherwise reorders around each of them (~15% of an RN50-FPN inference
        here). Every later op keeps the layout; the numbers are the same up to float rounding.
        Training keeps the default layout (losses bit for bit as before)."""
        if self.training or x.device.type != "cpu":
            return x
        return x.contiguous(memory_format=torch.channels_last)

    def forward_training(
        self, images, features, outputs: GridHeadOutputs, gt_instances, batched_inputs=None
    ):
        pred_logits, pred_deltas, pred_centerness = self._transpose_dense_predictions(
            outputs.dense_predictions(), [self.num_classes, 4, 1]
        )  # N x Ri x C, N x Ri x 4, N x Ri x 1 per level
        self._check_finite(logits=pred_logits, box_deltas=pred_deltas, centerness=pred_centerness)
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        losses = self.losses(
            anchors, pred_logits, gt_labels, pred_deltas, gt_boxes, pred_centerness
        )
        if self.image_alignment is not None:
            if batched_inputs is None:
                raise ValueError("the image-level alignment needs the batched inputs")
            proposals = known = None
            if self.image_alignment.regions == "proposals":  # from predictions, never from gt
                proposals, known = class_agnostic_proposals(
                    anchors,
                    pred_logits,
                    pred_deltas,
                    pred_centerness,
                    images.image_sizes,
                    self.box2box_transform,
                    self.image_alignment.num_proposals,
                    self.image_alignment.proposal_nms_thresh,
                    known_classes=self.loss_columns.class_mask
                    if self.image_alignment.weight_by_novelty
                    else None,
                )
            weights = None if known is None else [1.0 - k for k in known]
            losses.update(
                self.image_alignment(
                    outputs.grid_embeddings, self.strides, batched_inputs, proposals, weights
                )
            )
        return losses

    @staticmethod
    def _check_finite(**outputs: List[Tensor]) -> None:
        """FloatingPointError naming the head outputs that hold NaN/inf. Detectron2 checks only the
        summed loss, and with NaN boxes the GIoU loss fails first with an assertion that reads like
        a data error."""
        # one float32 sum per output (no float copy of half-precision logits), one sync
        sums = torch.stack([sum(t.sum(dtype=torch.float32) for t in ts) for ts in outputs.values()])
        if bool(torch.isfinite(sums).all()):
            return
        bad = [name for name, s in zip(outputs, sums) if not bool(torch.isfinite(s))]
        raise FloatingPointError(
            f"GridCLIP training diverged at iteration {get_event_storage().iter}: the head's "
            f"{' and '.join(bad)} hold NaN or inf. Lower SOLVER.BASE_LR (and keep "
            "SOLVER.CLIP_GRADIENTS on); checkpoints with non-finite weights are not saved, so "
            "--resume restarts from the last good one"
        )

    # ------------------------------------------------------------------ training targets and losses
    @torch.no_grad()
    def label_anchors(self, anchors: List[Boxes], gt_instances: List[Instances]):
        """FCOS's assignment; images without instances (where FCOS's matching fails on an empty
        gt set) get background labels and zero boxes, which no loss reads."""
        num_anchors = sum(len(a) for a in anchors)
        non_empty = [g for g in gt_instances if len(g) > 0]
        labels_ne, boxes_ne = super().label_anchors(anchors, non_empty) if non_empty else ([], [])
        labels_ne, boxes_ne = iter(labels_ne), iter(boxes_ne)
        device = anchors[0].tensor.device
        gt_labels, gt_boxes = [], []
        for g in gt_instances:
            if len(g) > 0:
                gt_labels.append(next(labels_ne))
                gt_boxes.append(next(boxes_ne))
            else:
                gt_labels.append(
                    torch.full((num_anchors,), self.num_classes, dtype=torch.int64, device=device)
                )
                gt_boxes.append(Boxes(torch.zeros((num_anchors, 4), device=device)))
        return gt_labels, gt_boxes

    def losses(
        self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, pred_centerness
    ):
        """FCOS's losses, renamed, with the classification loss restricted to the loss columns."""
        if self.num_classes != self.loss_columns.num_classes:
            raise RuntimeError(
                "the vocabulary was swapped "
                f"({self.loss_columns.num_classes} -> {self.num_classes} "
                "classes) with set_vocabulary, which is for inference; build a new model to train"
            )
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # N x R
        pos_mask = (gt_labels >= 0) & (gt_labels != self.num_classes)
        num_pos_anchors = pos_mask.sum().item()
        get_event_storage().put_scalar("num_pos_anchors", num_pos_anchors / num_images)
        normalizer = self._ema_update("loss_normalizer", max(num_pos_anchors, 1), 300)

        logits = torch.cat(pred_logits, dim=1)  # N x R x C
        logits, targets = self.loss_columns(logits, gt_labels, pos_mask)  # N x R x C' each
        loss_cls = sigmoid_focal_loss_jit(
            logits,
            targets,
            alpha=self.focal_loss_alpha,
            gamma=self.focal_loss_gamma,
            reduction="sum",
        )

        loss_box_reg = _dense_box_regression_loss(
            anchors,
            self.box2box_transform,
            pred_anchor_deltas,
            [x.tensor for x in gt_boxes],
            pos_mask,
            box_reg_loss_type="giou",
        )
        ctrness_targets = self.compute_ctrness_targets(anchors, gt_boxes)  # N x R
        pred_centerness = torch.cat(pred_centerness, dim=1).squeeze(dim=2)  # N x R
        loss_quality = F.binary_cross_entropy_with_logits(
            pred_centerness[pos_mask], ctrness_targets[pos_mask], reduction="sum"
        )
        return {
            "loss_cls": loss_cls / normalizer,
            "loss_box_reg": loss_box_reg / normalizer,
            "loss_quality": loss_quality / normalizer,
        }

    # ------------------------------------------------------------------ inference
    def forward_inference(self, images, features: List[Tensor], predictions: List[List[Tensor]]):
        """``FCOS.forward_inference`` with the scores ``sqrt(sigmoid(logit) * sigmoid(centerness))``
        computed in place in the logits (the same ops in the same order, so the same values), and
        only at the locations that can hold a detection (:func:`.dense_decoding.candidate_rows`):
        FCOS computes every score of every level (~40 MB per image at P3 with 1203 classes) and
        takes the top k of all of them."""
        pred_logits, pred_deltas, pred_centerness = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4, 1]
        )  # N x Ri x C, N x Ri x 4, N x Ri x 1 per level
        anchors = self.anchor_generator(features)
        results: List[Instances] = []
        for img_idx, image_size in enumerate(images.image_sizes):
            level_anchors, scores, deltas = [], [], []
            for anchors_i, x, y, d in zip(anchors, pred_logits, pred_centerness, pred_deltas):
                logits, ctr, delta = x[img_idx], y[img_idx], d[img_idx]  # Ri x C, Ri x 1, Ri x 4
                rows = candidate_rows(
                    logits, ctr, self.test_score_thresh, self.test_topk_candidates
                )
                if rows is not None:
                    logits, ctr, delta = logits[rows], ctr[rows], delta[rows]
                    anchors_i = anchors_i[rows]
                scores.append(logits.sigmoid_().mul_(ctr.sigmoid_()).sqrt_())  # in place: Ri x C
                level_anchors.append(anchors_i)
                deltas.append(delta)
            results.append(self.inference_single_image(level_anchors, scores, deltas, image_size))
        return results

    def inference_single_image(
        self,
        anchors: List[Boxes],
        box_cls: List[Tensor],
        box_delta: List[Tensor],
        image_size: Tuple[int, int],
    ) -> Instances:
        """``FCOS.inference_single_image``'s detections: the first ``max_detections_per_image``
        of per-class NMS over every level's candidates, with NMS run on the best-scoring
        candidates only (:func:`.dense_decoding.batched_nms_first`)."""
        pred = self._decode_multi_level_predictions(
            anchors,
            box_cls,
            box_delta,
            self.test_score_thresh,
            self.test_topk_candidates,
            image_size,
        )
        keep = batched_nms_first(
            pred.pred_boxes.tensor,
            pred.scores,
            pred.pred_classes,
            self.test_nms_thresh,
            self.max_detections_per_image,
        )
        return pred[keep]

    def _decode_per_level_predictions(
        self,
        anchors: Boxes,
        pred_scores: Tensor,
        pred_deltas: Tensor,
        score_thresh: float,
        topk_candidates: int,
        image_size: Tuple[int, int],
    ) -> Instances:
        """
        Same detections as ``DenseDetector._decode_per_level_predictions`` (the top
        ``topk_candidates`` of the location x class scores above ``score_thresh``), boxes clipped to
        the image. The base thresholds and sorts every score first (~10M per image with LVIS's
        1203 classes and a 1e-4 threshold); a top-k over the flattened scores followed by the
        threshold on the k survivors selects the same set (:func:`.dense_decoding.topk_flat`).

        Args:
            anchors: Ri anchor boxes of the level.
            pred_scores: Ri x C scores in [0, 1].
            pred_deltas: Ri x 4 box deltas.
        """
        return decode_level(
            self.box2box_transform,
            anchors,
            pred_scores,
            pred_deltas,
            score_thresh,
            topk_candidates,
            image_size,
        )

    # ------------------------------------------------------------------ vocabulary
    @torch.no_grad()
    def set_vocabulary(
        self,
        names: Optional[Sequence[str]] = None,
        embeddings: Union[None, str, os.PathLike, np.ndarray, Tensor] = None,
    ) -> None:
        """
        Replace the classifier's vocabulary (inference): predicted class ids then index it.

        Args:
            names: category names, embedded with the CLIP text encoder of the weights (and prompt
                settings) the model was built with, unless ``embeddings`` are given too; then they
                only name the rows (``self.vocabulary``).
            embeddings: a C x D array/tensor or the path of a ``.npy`` holding one.
        """
        names, emb = vocabulary_embeddings(names, embeddings, self.encode_vocabulary)
        # The classifier checks the dimension, normalises, and keeps its device.
        self.head.classifier.set_embeddings(emb)
        self.num_classes = int(emb.shape[0])
        self.vocabulary = names
