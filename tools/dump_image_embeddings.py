#!/usr/bin/env python
"""Precompute the frozen CLIP teacher's image-level embeddings of a data set into a cache file.

    python tools/dump_image_embeddings.py --config-file configs/GridCLIP_LVIS.yaml \
        --out datasets/metadata/lvis_v1_train_base_RN50_teacher.pt [--dataset lvis_v1_train_base] \
        [KEY VALUE ...]

For every dataset dict the image is read in RGB (Detectron2's ``read_image``), cut into the
alignment regions of MODEL.GRIDCLIP.IMAGE_ALIGN.GRIDS with the same functions the training mapper
uses (``crop_boxes`` / ``crop_and_resize``), and the teacher (``build_clip_teacher``: MODEL.CLIP.*)
runs on the crops in batches. The result (see ``gridclip_d2/modeling/teacher_cache.py``) is written
atomically; train with ``MODEL.GRIDCLIP.IMAGE_ALIGN.CACHE_FILE <out>`` to skip the teacher.
Memory: the whole N x K x D float32 table is held before writing (LVIS v1 base, RN50: ~5.7 GB).
"""

import gridclip_d2.library_warnings  # noqa: F401  (first: quiets the libraries' warnings)

import argparse
import logging
from typing import Iterable, List, Optional

import torch
import tqdm

from detectron2.data import DatasetCatalog
from detectron2.utils.logger import setup_logger

from gridclip_d2.data.alignment_crops import crop_and_resize, crop_boxes, num_regions
from gridclip_d2.data.mapper import read_image_checked
from gridclip_d2.engine import setup_cfg
from gridclip_d2.modeling.alignment import encode_teacher_images
from gridclip_d2.modeling.clip_resnet import build_clip_teacher
from gridclip_d2.modeling.teacher_cache import TeacherCache, cache_meta_from_cfg

logger = logging.getLogger("gridclip_d2.dump_image_embeddings")


def _unique_dicts(dataset_names: Iterable[str]) -> List[dict]:
    seen, dicts = set(), []
    for name in dataset_names:
        for d in DatasetCatalog.get(name):
            if "image_id" not in d:
                raise KeyError(
                    f"dataset {name!r}: dict for {d.get('file_name', '<no file_name>')} has no "
                    f"'image_id' to key the cache by"
                )
            if d["image_id"] not in seen:
                seen.add(d["image_id"])
                dicts.append(d)
    return dicts


def dump_image_embeddings(
    cfg,
    dataset_names: Iterable[str],
    out: str,
    batch_size: int = 64,
    device: Optional[str] = None,
    teacher: Optional[torch.nn.Module] = None,
) -> TeacherCache:
    """Compute the teacher embeddings of every image of ``dataset_names`` and write them to ``out``.

    Args:
        cfg: config with gridclip keys (MODEL.CLIP.*, MODEL.GRIDCLIP.IMAGE_ALIGN.*).
        dataset_names: names in DatasetCatalog; an image id seen twice is computed once.
        out: cache file path (written via a temporary file, then renamed).
        batch_size: crops per teacher forward pass.
        device: where the teacher runs (default cfg.MODEL.DEVICE).
        teacher: a prebuilt teacher (default ``build_clip_teacher(cfg)``).
    """
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    dataset_names = list(dataset_names)
    meta = cache_meta_from_cfg(cfg, dataset_names)
    grids, size = meta["grids"], meta["size"]
    K = num_regions(grids)
    if teacher is None:
        teacher = build_clip_teacher(cfg)
    teacher = teacher.to(device or cfg.MODEL.DEVICE).eval()

    dicts = _unique_dicts(dataset_names)
    table = torch.empty((len(dicts), K, teacher.embed_dim), dtype=torch.float32)  # N x K x D
    pending, pending_rows = [], []  # crops (K x 3 x S x S uint8) and their table rows

    def flush():
        if not pending:
            return
        emb = encode_teacher_images(teacher, torch.cat(pending), chunk=batch_size).cpu()
        table[torch.tensor(pending_rows)] = emb.view(len(pending_rows), K, -1)
        pending.clear()
        pending_rows.clear()

    for row, d in enumerate(tqdm.tqdm(dicts, desc="teacher embeddings", unit="img")):
        image = read_image_checked(d.get("file_name", ""), "RGB")  # H x W x 3 uint8
        boxes = crop_boxes(grids, image.shape[1], image.shape[0])  # K x 4
        pending.append(crop_and_resize(image, boxes, size))
        pending_rows.append(row)
        if len(pending) * K >= batch_size:
            flush()
    flush()

    cache = TeacherCache(meta, [d["image_id"] for d in dicts], table)
    cache.save(out)
    logger.info("Wrote teacher embeddings of %d images (%d regions each) to %s", len(dicts), K, out)
    return cache


def get_parser():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config-file", required=True, metavar="FILE", help="gridclip config")
    p.add_argument(
        "--dataset",
        action="append",
        default=None,
        help="data set name (repeatable); default: the config's DATASETS.TRAIN",
    )
    p.add_argument(
        "--out",
        default="",
        help="cache file; default: the config's MODEL.GRIDCLIP.IMAGE_ALIGN.CACHE_FILE",
    )
    p.add_argument("--batch-size", type=int, default=64, help="crops per teacher forward pass")
    p.add_argument("--device", default=None, help="default: the config's MODEL.DEVICE")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="gridclip_d2")
    # registers a data set given by DATASETS.GRIDCLIP.* (then DATASETS.TRAIN names it)
    cfg = setup_cfg(args.config_file, args.opts, mode="data")
    out = args.out or cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.CACHE_FILE
    if not out:
        raise SystemExit("no output file: pass --out or set MODEL.GRIDCLIP.IMAGE_ALIGN.CACHE_FILE")
    datasets = args.dataset or list(cfg.DATASETS.TRAIN)
    dump_image_embeddings(cfg, datasets, out, batch_size=args.batch_size, device=args.device)


if __name__ == "__main__":
    main()
