"""Multi-process training on CPUs through Detectron2's ``launch`` (gloo).

Two things stand between ``train_net.py --num-gpus N`` and N CPU workers:

* Detectron2's ``create_ddp_model`` passes ``device_ids=[local_rank]`` to
  ``DistributedDataParallel``, which DDP rejects for a CPU model:
  :func:`gridclip_d2.backports.patch_create_ddp_model` (re-exported here) fixes that.
* N workers on a CPU each start with every core's worth of intra-op threads and fight over the
  cores; :func:`set_cpu_threads_per_worker` divides the cores among the local workers (one thread
  each on a 2-core machine was 2.6x faster than the default there).

And one thing after it: Detectron2's ``launch`` leaves each worker's process group to the
interpreter's exit, where tearing gloo down from a destructor can abort the worker ("terminate
called without an active exception", SIGABRT, seen once in a few dozen 2-rank runs). :func:`launch`
is Detectron2's, with each worker's groups destroyed once its function has returned.
"""

import logging
import os

import torch
import torch.distributed as dist

from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

from ..backports import patch_create_ddp_model

logger = logging.getLogger(__name__)

__all__ = ["launch", "patch_create_ddp_model", "set_cpu_threads_per_worker", "available_cpus"]


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


def _run_then_close_process_group(main_func, *args):
    """A worker's body: ``main_func(*args)``, then every process group destroyed once all ranks
    are done (after an error the group is left as it is: the other ranks may still wait on it, and
    ``launch`` ends them)."""
    result = main_func(*args)
    if dist.is_available() and dist.is_initialized():
        comm.synchronize()  # no rank tears down a group another rank still uses
        dist.destroy_process_group()
        comm._LOCAL_PROCESS_GROUP = None  # Detectron2 keeps the (now destroyed) local group here
    return result


def launch(main_func, num_gpus_per_machine, num_machines=1, machine_rank=0, dist_url=None, args=()):
    """Detectron2's ``launch`` (same arguments), each worker's process groups closed when
    ``main_func`` returns. ``main_func`` and ``args`` must be picklable (workers are spawned)."""
    d2_launch(
        _run_then_close_process_group,
        num_gpus_per_machine,
        num_machines=num_machines,
        machine_rank=machine_rank,
        dist_url=dist_url,
        args=(main_func, *args),
    )
