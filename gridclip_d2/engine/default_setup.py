"""Detectron2's ``default_setup`` with a quiet terminal: what ``train_net.py`` logs where.

A record logged with ``extra=FILE_ONLY`` goes to OUTPUT_DIR/log.txt and not to the terminal (the
environment, the full config, the model's layers): a user reads the run's progress on the
terminal and finds everything else in the log file.
"""

import logging
import os
import sys

import torch

from detectron2.utils import comm
from detectron2.utils.collect_env import collect_env_info
from detectron2.utils.env import seed_all_rng
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger

__all__ = ["FILE_ONLY", "default_setup"]

logger = logging.getLogger(__name__)
FILE_ONLY = {"file_only": True}  # ``logger.info(..., extra=FILE_ONLY)``: to log.txt only


def _not_file_only(record: logging.LogRecord) -> bool:
    return not getattr(record, "file_only", False)


def default_setup(cfg, args) -> None:
    """Detectron2's ``default_setup`` (v0.6, ``detectron2/engine/defaults.py``) with a quieter
    terminal: the same loggers (fvcore, detectron2, and the package's) writing to
    OUTPUT_DIR/log.txt, the same config.yaml and seeds, but the environment and the full config go
    to log.txt only, once and without colour codes (Detectron2 prints the config file and then the
    merged config to the terminal, highlighted). A record logged with ``extra=FILE_ONLY`` skips
    the terminal."""
    output_dir, rank = cfg.OUTPUT_DIR, comm.get_rank()
    if comm.is_main_process() and output_dir:
        PathManager.mkdirs(output_dir)
    for name in ("fvcore", "detectron2", "gridclip_d2"):
        for handler in setup_logger(output_dir, distributed_rank=rank, name=name).handlers:
            # Detectron2's handlers are all StreamHandlers: the terminal's writes to stdout
            if getattr(handler, "stream", None) in (sys.stdout, sys.stderr):
                if _not_file_only not in handler.filters:
                    handler.addFilter(_not_file_only)
    logger.info("Rank of current process: %d. World size: %d", rank, comm.get_world_size())
    logger.info("Command line arguments: %s", args)
    logger.info("Environment info:\n%s", collect_env_info(), extra=FILE_ONLY)
    if comm.is_main_process() and output_dir:
        path = os.path.join(output_dir, "config.yaml")
        text = cfg.dump()
        with PathManager.open(path, "w") as f:
            f.write(text)
        logger.info("Full config:\n%s", text, extra=FILE_ONLY)
        where = f" (and in {os.path.join(output_dir, 'log.txt')}, with the environment)"
        logger.info("Full config saved to %s%s", path, where)
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    if not getattr(args, "eval_only", False):
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK
