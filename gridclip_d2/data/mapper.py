"""Training/test mapper: Detectron2's DatasetMapper plus what the image-level alignment needs.

On top of :class:`detectron2.data.DatasetMapper` (read, augment, annotations -> ``instances``), a
training sample with image-level alignment enabled carries:

* ``align_boxes``: K x 4 float32, XYXY, in the coordinates of the augmented ``image``: the crop
  regions of :func:`~gridclip_d2.data.alignment_crops.crop_boxes` computed on the *original* image
  and mapped through the same transforms as the image (``transforms.apply_box``), so a flip or
  resize moves them with the pixels.
* ``teacher_images``: K x 3 x S x S uint8 RGB crops of the *original* image at the same regions
  (S = teacher input size), whatever INPUT.FORMAT is. Left out when teacher outputs come from a
  cache file (``with_teacher_images=False``).

Bad input:
* a missing, unreadable or truncated image file, or one whose size disagrees with the json's
  width/height: in training the sample is skipped with a warning naming the file (Detectron2's
  ``MapDataset`` then takes another), so one bad image never ends a long run; at test time it is an
  error naming the file (an evaluation scores every image of its json);
* boxes are handled the way Detectron2 does: clipped to the image, then instances whose box is
  empty after clipping (zero area, or lying outside the image) are dropped by
  ``filter_empty_instances``; here each drop is logged as a warning naming the image file.
"""

import copy
import logging
from typing import Sequence

import numpy as np
import torch

from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..config import cache_in_use, teacher_input_size_from_cfg
from .alignment_crops import crop_and_resize, crop_boxes
from .image_io import read_image

__all__ = ["GridCLIPDatasetMapper", "read_image_checked", "image_to_rgb"]

logger = logging.getLogger(__name__)


def read_image_checked(file_name: str, format: str) -> np.ndarray:
    """The project's image reader (:func:`gridclip_d2.data.image_io.read_image`: Detectron2's
    ``read_image``, with 16-bit images scaled rather than clipped) for a dataset dict's
    ``file_name``; errors name the file (FileNotFoundError, or an OSError for a corrupt or
    truncated one)."""
    if not file_name:
        raise ValueError("dataset dict has no 'file_name' to read the image from")
    return read_image(file_name, format=format)


def image_to_rgb(image: np.ndarray, image_format: str) -> np.ndarray:
    """H x W x 3 uint8 RGB version of ``image`` read in ``image_format`` (GridCLIP itself takes
    only "RGB"; the mapper alone also takes what Detectron2's ``convert_image_to_rgb`` does)."""
    if image_format == "RGB":
        return image
    return np.ascontiguousarray(utils.convert_image_to_rgb(image, image_format), dtype=np.uint8)


class GridCLIPDatasetMapper(DatasetMapper):
    """DatasetMapper that also emits ``align_boxes`` and ``teacher_images`` (see module doc)."""

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        image_align: bool = False,
        align_grids: Sequence[int] = (1, 2, 3),
        teacher_input_size: int = 224,
        with_teacher_images: bool = True,
        **kwargs,
    ):
        """
        Args:
            is_train, kwargs: as :class:`detectron2.data.DatasetMapper` (augmentations,
                image_format, ...).
            image_align: emit the alignment fields (only when ``is_train``).
            align_grids: crop grids, e.g. (1, 2, 3) -> K = 14 regions.
            teacher_input_size: side S of ``teacher_images``.
            with_teacher_images: emit ``teacher_images`` (False when a teacher cache is used).
        """
        super().__init__(is_train, **kwargs)
        self.image_align = bool(image_align) and is_train
        self.align_grids = [int(g) for g in align_grids]
        crop_boxes(self.align_grids, 1, 1)  # validates the grids now rather than per sample
        self.teacher_input_size = int(teacher_input_size)
        self.with_teacher_images = bool(with_teacher_images)
        self.num_skipped = 0

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        align = cfg.MODEL.GRIDCLIP.IMAGE_ALIGN
        # the mapper's regions are the grids; proposals are the model's own (made in its forward)
        image_align = bool(is_train and align.ENABLED and align.REGIONS == "grids")
        if image_align and cfg.INPUT.CROP.ENABLED:
            raise ValueError(
                "INPUT.CROP.ENABLED is not supported with MODEL.GRIDCLIP.IMAGE_ALIGN.ENABLED: the "
                "teacher sees regions of the whole original image, which a random crop cuts away"
            )
        ret.update(
            image_align=image_align,
            align_grids=list(align.GRIDS),
            teacher_input_size=teacher_input_size_from_cfg(cfg) if image_align else 224,
            with_teacher_images=not cache_in_use(cfg),
        )
        return ret

    def _transform_annotations(self, dataset_dict, transforms, image_shape):
        num_before = sum(
            1 for obj in dataset_dict.get("annotations", []) if obj.get("iscrowd", 0) == 0
        )
        super()._transform_annotations(dataset_dict, transforms, image_shape)
        dropped = num_before - len(dataset_dict["instances"])
        if dropped:
            logger.warning(
                "%s: dropped %d of %d boxes that are empty after clipping to the image "
                "(zero area or outside the image)",
                dataset_dict.get("file_name", "<no file_name>"),
                dropped,
                num_before,
            )

    def __call__(self, dataset_dict):
        """dataset dict (Detectron2 format) -> model input dict (see module doc)."""
        dataset_dict = copy.deepcopy(dataset_dict)  # modified below
        file_name = dataset_dict.get("file_name", "")
        try:
            image = read_image_checked(file_name, self.image_format)
            utils.check_image_size(dataset_dict, image)
        except (OSError, utils.SizeMismatchError) as e:
            if not self.is_train:
                raise  # an evaluation must score every image of its json
            # One bad image must not end a long run: Detectron2's MapDataset takes another sample.
            self.num_skipped += 1
            logger.warning(
                "Skipping a training image (%d skipped so far in this loader process): %s",
                self.num_skipped,
                e,
            )
            return None
        original = image  # H0 x W0 x 3, INPUT.FORMAT

        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        image_shape = image.shape[:2]  # h, w
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))

        if self.proposal_topk is not None:
            utils.transform_proposals(
                dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk
            )

        if not self.is_train:
            dataset_dict.pop("annotations", None)
            dataset_dict.pop("sem_seg_file_name", None)
            return dataset_dict

        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image_shape)

        if self.image_align:
            h0, w0 = original.shape[:2]
            boxes = crop_boxes(self.align_grids, w0, h0)  # K x 4, original image
            moved = transforms.apply_box(boxes.numpy().astype(np.float64))
            dataset_dict["align_boxes"] = torch.as_tensor(moved, dtype=torch.float32)  # K x 4
            if self.with_teacher_images:
                rgb = image_to_rgb(original, self.image_format)
                # K x 3 x S x S uint8
                dataset_dict["teacher_images"] = crop_and_resize(
                    rgb, boxes, self.teacher_input_size
                )
        return dataset_dict
