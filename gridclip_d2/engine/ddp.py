"""Multi-process training on CPUs through Detectron2's ``launch`` (gloo).

Two things stand between ``train_net.py --num-gpus N`` and N CPU workers:

* Detectron2's ``create_ddp_model`` passes ``device_ids=[local_rank]`` to
  ``DistributedDataParallel``, which DDP rejects for a CPU model:
  :func:`gridclip_d2.backports.patch_create_ddp_model` (re-exported here) fixes that.
* N workers on a CPU each start with every core's worth of intra-op threads and fight over the
  cores; :func:`set_cpu_threads_per_worker` divides the cores among the local workers (one thread
  each on a 2-core machine was 2.6x faster than the default there).
"""

import logging
import os

import torch

from detectron2.utils import comm

from ..backports import patch_create_ddp_model

logger = logging.getLogger(__name__)

__all__ = ["patch_create_ddp_model", "set_cpu_threads_per_worker", "available_cpus"]


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def set_cpu_threads_per_worker() -> int:
    """In a multi-process CPU job, give each local worker an equal share of the cores.

    Does nothing (returns the current count) with a single process, with CUDA, or when the user set
    ``OMP_NUM_THREADS`` explicitly. Returns the number of intra-op threads in use.
    """
    if comm.get_world_size() <= 1 or torch.cuda.is_available() or "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    threads = max(1, available_cpus() // max(1, comm.get_local_size()))
    torch.set_num_threads(threads)
    logger.info(
        f"CPU worker {comm.get_local_rank()}/{comm.get_local_size()}: {threads} intra-op thread(s)"
    )
    return threads
