"""The no-code path to a user's LVIS-format data: ``DATASETS.GRIDCLIP.*`` in the config."""

import logging
import os
from typing import Sequence

from detectron2.data import MetadataCatalog
from detectron2.utils.file_io import PathManager

from .register import register_lvis_format

__all__ = ["register_from_cfg"]

logger = logging.getLogger(__name__)


def register_from_cfg(
    cfg, splits: Sequence[str] = ("train", "test"), check_train_images: bool = True
):
    """The no-code path: when ``DATASETS.GRIDCLIP.NAME`` is set, register ``<NAME>_train`` from
    TRAIN_JSON/TRAIN_IMAGES (with the split of NOVEL_CLASSES) and ``<NAME>_test`` from
    TEST_JSON/TEST_IMAGES (its r/c/f from the training split's counts when its json has none), and
    point ``DATASETS.TRAIN`` / ``DATASETS.TEST`` at them. Without TEST_JSON, ``DATASETS.TEST`` is
    emptied: the config file's test set has other classes. NOVEL_CLASSES ["auto"] is replaced by the
    names it selects, so a saved config names them. Returns ``cfg``.

    Args:
        splits: the splits to register ("train", "test"); the others are left unregistered (the demo
            needs none, an evaluation only the test set).
        check_train_images: False registers the training set without checking its images (its
            classes and split are all an evaluation needs).
    """
    opts = cfg.DATASETS.GRIDCLIP
    if not opts.NAME:
        if len(opts.NOVEL_CLASSES):
            raise ValueError(
                "DATASETS.GRIDCLIP.NOVEL_CLASSES is set but DATASETS.GRIDCLIP.NAME is not: "
                "it splits the data set given by DATASETS.GRIDCLIP.*"
            )
        return cfg
    if not opts.TRAIN_JSON and not opts.TEST_JSON:
        raise ValueError(
            f"DATASETS.GRIDCLIP.NAME is '{opts.NAME}' but neither DATASETS.GRIDCLIP.TRAIN_JSON "
            "nor DATASETS.GRIDCLIP.TEST_JSON is set"
        )
    frozen = cfg.is_frozen()
    cfg.defrost()
    train_counts = None
    for split, key, json_file, images in (
        ("train", "TRAIN", opts.TRAIN_JSON, opts.TRAIN_IMAGES),
        ("test", "TEST", opts.TEST_JSON, opts.TEST_IMAGES),
    ):
        name = f"{opts.NAME}_{split}"
        if not json_file:
            if split == "test":
                logger.warning(
                    f"DATASETS.GRIDCLIP.NAME is '{opts.NAME}' without "
                    "DATASETS.GRIDCLIP.TEST_JSON: nothing is evaluated "
                    f"(DATASETS.TEST {tuple(cfg.DATASETS.TEST)} emptied); set TEST_JSON and "
                    "TEST_IMAGES to evaluate on your test set"
                )
                cfg.DATASETS.TEST = ()
            else:
                cfg.DATASETS.TRAIN = ()
            continue
        if not images:
            raise ValueError(
                f"DATASETS.GRIDCLIP.{key}_JSON is set but "
                f"DATASETS.GRIDCLIP.{key}_IMAGES (the image folder) is empty"
            )
        setattr(cfg.DATASETS, key, (name,))
        if split not in splits:
            continue
        if not os.path.isfile(PathManager.get_local_path(json_file)):
            if split == "train" and not check_train_images:
                logger.info(
                    f"DATASETS.GRIDCLIP.TRAIN_JSON '{json_file}' is absent: '{name}' not registered"
                )
                continue
            raise FileNotFoundError(f"DATASETS.GRIDCLIP.{key}_JSON: '{json_file}' does not exist")
        if split == "train":
            register_lvis_format(
                name,
                json_file,
                images,
                novel_classes=list(opts.NOVEL_CLASSES),
                check_images=check_train_images,
            )
            meta = MetadataCatalog.get(name)
            train_counts = dict(zip(meta.thing_classes, meta.image_count_per_class))
            if list(opts.NOVEL_CLASSES) == ["auto"]:
                opts.NOVEL_CLASSES = [meta.thing_classes[i] for i in meta.novel_class_ids]
                logger.info(f"DATASETS.GRIDCLIP.NOVEL_CLASSES auto: {list(opts.NOVEL_CLASSES)}")
        else:
            register_lvis_format(name, json_file, images, train_image_count=train_counts)
    if frozen:
        cfg.freeze()
    return cfg
