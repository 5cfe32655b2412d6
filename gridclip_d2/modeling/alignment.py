"""Image-level alignment: distil the frozen CLIP image encoder into pooled grid embeddings.

Regions (IMAGE_ALIGN.REGIONS), per training image:

* ``"grids"``: K regions from the mapper (``align_boxes``, K x 4 XYXY in the input image's
  coordinates: the whole image and its grid crops, see :mod:`gridclip_d2.data.alignment_crops`),
  with the teacher's inputs (``teacher_images``) or a teacher cache;
* ``"proposals"`` (ViLD's form): the detector's own top-K class-agnostic boxes of the step
  (:func:`.proposals.class_agnostic_proposals`, computed by :class:`.GridCLIP` from its
  predictions, never from ground truth); the teacher embeds, on the fly, the square crop of twice
  each box's longer side (:func:`gridclip_d2.region_crops.framed_boxes`) cut from the input image,
  the framing its zero-shot accuracy is measured on.

For each region:

* student: the per-cell grid embeddings (N x D x Hi x Wi per level, L2-normalised per cell) are
  pooled inside the region on every level (or the LEVELS subset) with
  ``torchvision.ops.roi_align`` (spatial scale 1 / stride, ``P x P`` bins, adaptive sampling; for
  the mean, :mod:`.mean_roi_align`'s fast backward), reduced over the bins by mean or max
  (IMAGE_ALIGN.POOL), averaged over levels and L2-normalised -> D;
* teacher: the frozen CLIP image encoder's embedding of the same region of the original image
  (``teacher_images``, run under ``torch.no_grad``), or the one stored for that image in the
  teacher cache file (IMAGE_ALIGN.CACHE_FILE, see :mod:`.teacher_cache`), L2-normalised -> D.

Loss (ViLD's image distillation loss): ``LOSS_WEIGHT * mean over regions of ||s - t||_1``, the L1
norm summing over the D dimensions. It does not depend on instances, so it is finite for images
without any; with no regions in the batch it is an exact zero that still touches the graph.
"""

import logging
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from detectron2.config import configurable

from ..config import cache_in_use, teacher_input_size_from_cfg
from ..region_crops import crop_and_resize, framed_boxes
from .clip_resnet import build_clip_teacher, normalize_clip_input
from .mean_roi_align import mean_roi_align
from .teacher_cache import TeacherCache, cache_meta_from_cfg

__all__ = ["ImageAlignment", "pool_regions", "encode_teacher_images"]

logger = logging.getLogger(__name__)


REGION_MODES = ("grids", "proposals")


def _check_pool(pool: str) -> None:
    if pool not in ("mean", "max"):
        raise ValueError(f"MODEL.GRIDCLIP.IMAGE_ALIGN.POOL must be 'mean' or 'max', got {pool!r}")


def pool_regions(
    grid_embeddings: Sequence[torch.Tensor],
    strides: Sequence[int],
    boxes: Sequence[torch.Tensor],
    pool: str = "mean",
    resolution: int = 7,
) -> torch.Tensor:
    """
    Args:
        grid_embeddings: per level N x D x Hi x Wi.
        strides: per level, the stride of its cells in input pixels.
        boxes: per image, K_i x 4 XYXY boxes in input pixels.
        pool: "mean" or "max" over the ``resolution x resolution`` RoIAlign bins of a region.

    Returns:
        (sum K_i) x D, L2-normalised: regions of image 0 first, then image 1, ...
    """
    _check_pool(pool)
    if len(grid_embeddings) != len(strides) or not grid_embeddings:
        raise ValueError(
            f"need one stride per grid-embedding level, got {len(grid_embeddings)} levels and "
            f"{len(strides)} strides"
        )
    pooled = []
    for emb, stride in zip(grid_embeddings, strides):
        rois = _rois(boxes, emb)  # R x 5
        if pool == "mean":  # the same values as the roi_align below, a fast backward
            pooled.append(mean_roi_align(emb, rois, resolution, 1.0 / stride))
            continue
        # R x D x P x P; sampling_ratio 0 = ceil(region size / P) samples per bin
        bins = roi_align(
            emb, rois, resolution, spatial_scale=1.0 / stride, sampling_ratio=0, aligned=True
        )
        pooled.append(bins.amax(dim=(2, 3)))
    return F.normalize(torch.stack(pooled).mean(dim=0), dim=-1)  # R x D


def _rois(boxes: Sequence[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Per-image K_i x 4 boxes -> (sum K_i) x 5 (image index, x0, y0, x1, y1), as roi_align
    takes."""
    rows = [
        torch.cat([torch.full((len(b), 1), float(i)), b.float().cpu().reshape(-1, 4)], dim=1)
        for i, b in enumerate(boxes)
    ]
    return torch.cat(rows).to(device=like.device, dtype=like.dtype)


@torch.no_grad()
def encode_teacher_images(
    teacher: nn.Module, images: torch.Tensor, chunk: int = 256
) -> torch.Tensor:
    """uint8 RGB crops M x 3 x S x S -> M x D L2-normalised float32 teacher embeddings."""
    device = next(teacher.parameters()).device
    out = []
    for start in range(0, images.shape[0], chunk):
        x = normalize_clip_input(images[start : start + chunk].to(device))
        out.append(F.normalize(teacher.encode_image(x).float(), dim=-1))
    if not out:
        return torch.zeros((0, teacher.embed_dim), device=device)
    return torch.cat(out)


def _drop_teacher_entries(module, state_dict, prefix, local_metadata):
    for k in [k for k in state_dict if k.startswith(prefix + "teacher.")]:
        del state_dict[k]


def _keep_own_teacher(
    module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors
):
    # Whatever a checkpoint holds under teacher.*, the teacher keeps its own tensors.
    for k in [k for k in state_dict if k.startswith(prefix + "teacher.")]:
        del state_dict[k]
    if module.teacher is not None:
        for k, v in module.teacher.state_dict(keep_vars=True).items():
            state_dict[prefix + "teacher." + k] = v.detach()


class ImageAlignment(nn.Module):
    """The image-level alignment loss (see module docstring)."""

    @configurable
    def __init__(
        self,
        *,
        loss_weight: float = 1.0,
        pool: str = "mean",
        teacher: Optional[nn.Module] = None,
        cache: Optional[TeacherCache] = None,
        pool_resolution: int = 7,
        regions: str = "grids",
        num_proposals: int = 10,
        proposal_nms_thresh: float = 0.5,
        levels: Optional[Sequence[int]] = None,
        teacher_input_size: int = 224,
        weight_by_novelty: bool = False,
    ):
        """
        Args:
            loss_weight: multiplies the loss.
            pool: "mean" or "max" pooling of grid embeddings inside a region.
            teacher: frozen CLIP image encoder with ``encode_image`` (e.g. ``build_clip_teacher``);
                never trained, kept in eval mode. Needed for images not in ``cache``.
            cache: precomputed teacher embeddings keyed by image id.
            pool_resolution: RoIAlign bins per side when pooling a region.
            regions: "grids" (``align_boxes`` of the inputs) or "proposals" (boxes given to
                :meth:`forward`; the teacher embeds their framed crops of the input image).
            num_proposals: K, proposals per image (read by :class:`.GridCLIP`).
            proposal_nms_thresh: NMS IoU of the proposals (read by :class:`.GridCLIP`).
            levels: indices of the grid-embedding levels to pool (None: all).
            teacher_input_size: side of the teacher's crops in "proposals" mode.
            weight_by_novelty: "proposals" mode: :class:`.GridCLIP` weights each proposal's loss
                by 1 - the detector's best base-class probability there (read by it).
        """
        super().__init__()
        _check_pool(pool)  # at build time, not at the first training step
        if regions not in REGION_MODES:
            raise ValueError(
                f"MODEL.GRIDCLIP.IMAGE_ALIGN.REGIONS must be one of {REGION_MODES}, got {regions!r}"
            )
        if teacher is None and cache is None:
            raise ValueError("ImageAlignment needs a teacher, a teacher cache, or both")
        if regions == "proposals" and teacher is None:
            raise ValueError(
                "MODEL.GRIDCLIP.IMAGE_ALIGN.REGIONS 'proposals' needs the on-the-fly teacher: the "
                "proposals of a step are not known in advance, so a teacher cache cannot hold them"
            )
        if int(num_proposals) < 1:
            raise ValueError(
                f"MODEL.GRIDCLIP.IMAGE_ALIGN.NUM_PROPOSALS must be >= 1, got {num_proposals}"
            )
        self.regions = regions
        self.num_proposals = int(num_proposals)
        self.proposal_nms_thresh = float(proposal_nms_thresh)
        self.levels = None if levels is None else [int(i) for i in levels]
        self.teacher_input_size = int(teacher_input_size)
        self.weight_by_novelty = bool(weight_by_novelty)
        self.loss_weight = float(loss_weight)
        self.pool = pool
        self.pool_resolution = int(pool_resolution)
        self.teacher = teacher
        if teacher is not None:  # any teacher given (build_clip_teacher's is frozen already)
            teacher.requires_grad_(False).eval()
        self.cache = cache  # plain attribute: not a module, not in the state dict
        # The teacher is a fixed function of MODEL.CLIP.WEIGHTS, rebuilt with the model: keep it out
        # of checkpoints (it would double an RN50 checkpoint) and never load it from one.
        self.register_state_dict_post_hook(_drop_teacher_entries)
        self.register_load_state_dict_pre_hook(_keep_own_teacher)

    @classmethod
    def from_config(cls, cfg):
        align = cfg.MODEL.GRIDCLIP.IMAGE_ALIGN
        cache = None
        if align.REGIONS == "proposals" and cache_in_use(cfg):
            raise ValueError(
                "MODEL.GRIDCLIP.IMAGE_ALIGN.REGIONS 'proposals' cannot use a teacher cache "
                f"(IMAGE_ALIGN.CACHE_FILE {align.CACHE_FILE}): the proposals of a step are not "
                "known in advance; set CACHE_FILE '' or REGIONS 'grids'"
            )
        if cache_in_use(cfg):
            cache = TeacherCache.load(align.CACHE_FILE, cache_meta_from_cfg(cfg))
            logger.info(
                "Image-level alignment: %d images' teacher embeddings from %s",
                len(cache),
                align.CACHE_FILE,
            )
        elif align.CACHE_FILE:
            logger.warning(
                "MODEL.GRIDCLIP.IMAGE_ALIGN.CACHE_FILE %s does not exist: the CLIP "
                "teacher runs on the fly",
                align.CACHE_FILE,
            )
        in_features = list(cfg.MODEL.GRIDCLIP.IN_FEATURES)
        unknown = [f for f in align.LEVELS if f not in in_features]
        if unknown:
            raise ValueError(
                f"MODEL.GRIDCLIP.IMAGE_ALIGN.LEVELS {list(align.LEVELS)}: {unknown} not in "
                f"MODEL.GRIDCLIP.IN_FEATURES {in_features}"
            )
        return {
            "loss_weight": align.LOSS_WEIGHT,
            "pool": align.POOL,
            "teacher": None if cache is not None else build_clip_teacher(cfg),
            "cache": cache,
            "regions": align.REGIONS,
            "num_proposals": align.NUM_PROPOSALS,
            "proposal_nms_thresh": align.PROPOSAL_NMS_THRESH,
            "levels": [in_features.index(f) for f in align.LEVELS] if align.LEVELS else None,
            "teacher_input_size": teacher_input_size_from_cfg(cfg),
            "weight_by_novelty": align.WEIGHT_BY_NOVELTY,
        }

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # a fixed teacher: BN statistics and dropout never in train mode
        return self

    def _teacher_embeddings(self, inputs: List[dict], device) -> torch.Tensor:
        """Teacher embeddings of every region of ``inputs`` (all carrying align_boxes): R x D."""
        per_image: List[Optional[torch.Tensor]] = [None] * len(inputs)
        to_run = []
        for i, x in enumerate(inputs):
            image_id = x.get("image_id")
            if self.cache is not None and image_id in self.cache:
                per_image[i] = self.cache[image_id].to(device=device, dtype=torch.float32)
            elif self.teacher is None:
                raise KeyError(
                    f"image id {image_id!r} is not in the teacher cache {self.cache.path} and no "
                    f"on-the-fly teacher was built (the cache file exists); rerun "
                    f"tools/dump_image_embeddings.py on this data set, or set "
                    f"MODEL.GRIDCLIP.IMAGE_ALIGN.CACHE_FILE ''"
                )
            elif "teacher_images" not in x:
                raise KeyError(
                    f"input for image id {image_id!r} has align_boxes but no teacher_images: "
                    f"map it with GridCLIPDatasetMapper(with_teacher_images=True)"
                )
            else:
                to_run.append(i)
        if to_run:
            images = torch.cat([inputs[i]["teacher_images"] for i in to_run])  # M x 3 x S x S
            emb = encode_teacher_images(self.teacher, images).to(device)
            counts = [inputs[i]["teacher_images"].shape[0] for i in to_run]
            for i, e in zip(to_run, emb.split(counts)):
                per_image[i] = e
        for x, e in zip(inputs, per_image):
            if e.shape[0] != x["align_boxes"].shape[0]:
                raise ValueError(
                    f"image id {x.get('image_id')!r}: {x['align_boxes'].shape[0]} align_boxes but "
                    f"{e.shape[0]} teacher embeddings (IMAGE_ALIGN.GRIDS differs from the cache's "
                    f"or the mapper's?)"
                )
        return F.normalize(torch.cat(per_image), dim=-1)

    def _proposal_teacher_embeddings(self, inputs: List[dict], boxes: List[torch.Tensor], device):
        """Teacher embeddings of the framed crops of ``boxes`` (per image, in the coordinates of
        its ``image``): R x D."""
        crops = []
        for x, b in zip(inputs, boxes):
            if not len(b):
                continue
            image = x["image"]  # 3 x H x W uint8 RGB (GridCLIP takes only INPUT.FORMAT "RGB")
            height, width = image.shape[-2:]
            squares = framed_boxes(b.detach().cpu(), width, height)
            rgb = image.permute(1, 2, 0).cpu().numpy()  # H x W x 3
            crops.append(crop_and_resize(rgb, squares, self.teacher_input_size))
        return encode_teacher_images(self.teacher, torch.cat(crops)).to(device)

    def forward(
        self,
        grid_embeddings: List[torch.Tensor],
        strides: List[int],
        batched_inputs: List[dict],
        proposals: Optional[List[torch.Tensor]] = None,
        weights: Optional[List[torch.Tensor]] = None,
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            grid_embeddings: per level N x D x Hi x Wi, L2-normalised along D.
            strides: per level stride in input pixels.
            batched_inputs: the model's inputs; in "grids" mode, images without ``align_boxes``
                are skipped.
            proposals: "proposals" mode: per image, K_i x 4 XYXY boxes in input pixels.
            weights: per image, K_i weights of the regions' losses (None: all 1); the loss is
                their weighted sum over the number of regions.

        Returns:
            {"loss_image_align": scalar}
        """
        if self.levels is not None:
            grid_embeddings = [grid_embeddings[i] for i in self.levels]
            strides = [strides[i] for i in self.levels]
        if self.regions == "proposals":
            if proposals is None or len(proposals) != len(batched_inputs):
                raise ValueError(
                    "IMAGE_ALIGN.REGIONS 'proposals': forward needs one box tensor per input"
                )
            boxes = list(proposals)
        else:
            boxes = [
                x["align_boxes"] if "align_boxes" in x else torch.zeros((0, 4))
                for x in batched_inputs
            ]
        if not any(len(b) for b in boxes):
            zero = sum(g.sum() for g in grid_embeddings) * 0.0
            return {"loss_image_align": zero}
        student = pool_regions(grid_embeddings, strides, boxes, self.pool, self.pool_resolution)
        if self.regions == "proposals":
            teacher = self._proposal_teacher_embeddings(batched_inputs, boxes, student.device)
        else:
            with_regions = [x for x, b in zip(batched_inputs, boxes) if len(b)]
            teacher = self._teacher_embeddings(with_regions, student.device)  # R x D
        if teacher.shape[1] != student.shape[1]:
            raise ValueError(
                f"grid embedding dim {student.shape[1]} differs from the CLIP teacher's embedding "
                f"dim {teacher.shape[1]}"
            )
        per_region = (student - teacher).abs().sum(dim=1)  # R
        if weights is not None:
            w = torch.cat([torch.as_tensor(x, dtype=per_region.dtype) for x in weights])
            per_region = per_region * w.to(per_region.device).detach()
        return {"loss_image_align": self.loss_weight * per_region.mean()}
