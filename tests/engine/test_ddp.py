"""Multi-process training on CPUs: the create_ddp_model fix, under a real 2-rank gloo group."""

import torch
import torch.distributed as dist

import detectron2.engine.defaults as d2_defaults
from detectron2.utils import comm

from gridclip_d2 import backports
from gridclip_d2.engine import ddp, launch


def _upstream_create_ddp_model(model, *, fp16_compression=False, **kwargs):
    # Upstream Detectron2 v0.6 (unpatched): device_ids=[local_rank] unless given.
    if comm.get_world_size() == 1:
        return model
    if "device_ids" not in kwargs:
        kwargs["device_ids"] = [comm.get_local_rank()]
    return torch.nn.parallel.DistributedDataParallel(model, **kwargs)


def _train_replicas():
    torch.manual_seed(comm.get_rank())  # different init per rank: DDP must broadcast rank 0's
    model = d2_defaults.create_ddp_model(torch.nn.Linear(3, 2), broadcast_buffers=False)
    assert isinstance(model, torch.nn.parallel.DistributedDataParallel)
    assert model.device_ids is None
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(3):
        x = torch.full((4, 3), float(comm.get_rank() + step))  # different data per rank
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(comm.get_world_size())]
    dist.all_gather(gathered, flat)
    return gathered


def _worker(result_dir):
    out = {"backend": dist.get_backend(), "threads": ddp.set_cpu_threads_per_worker()}
    # 1. The failure the fix exists for: DDP rejects device_ids for a CPU model.
    try:
        _upstream_create_ddp_model(torch.nn.Linear(3, 2))
        out["upstream_error"] = ""
    except (ValueError, RuntimeError, AssertionError) as e:
        out["upstream_error"] = str(e) or type(e).__name__
    # 2. The installed Detectron2 function, wrapped.
    installed = d2_defaults.create_ddp_model
    backports.patch_create_ddp_model()
    out["installed"] = _train_replicas()
    # 3. Upstream's function, wrapped; patching twice installs one wrapper.
    d2_defaults.create_ddp_model = _upstream_create_ddp_model
    backports.patch_create_ddp_model()
    backports.patch_create_ddp_model()
    out["wraps_upstream"] = d2_defaults.create_ddp_model.__wrapped__ is _upstream_create_ddp_model
    out["upstream"] = _train_replicas()
    d2_defaults.create_ddp_model = installed
    torch.save(out, f"{result_dir}/rank{comm.get_rank()}.pt")


def test_cpu_ddp_two_gloo_ranks(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    launch(_worker, 2, dist_url="auto", args=(str(tmp_path),))
    out = torch.load(tmp_path / "rank0.pt")
    assert out["backend"] == "gloo"
    assert out["threads"] == max(1, ddp.available_cpus() // 2)
    assert out["upstream_error"], "DDP accepted device_ids for a CPU model"
    assert out["wraps_upstream"]
    for key in ("installed", "upstream"):
        a, b = out[key]
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # replicas stay identical


def test_single_process_is_untouched():
    backports.patch_create_ddp_model()
    model = torch.nn.Linear(2, 2)
    assert d2_defaults.create_ddp_model(model) is model
    assert ddp.set_cpu_threads_per_worker() == torch.get_num_threads()
