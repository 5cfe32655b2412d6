#!/usr/bin/env python
"""Speed, memory and FLOPs of GridCLIP against the detectors a user would pick instead, in one run.

    python tools/benchmark.py                              # 640x640 and 800x1333, every model
    python tools/benchmark.py --size 640 640 --json output/benchmark/bench.json \
        --plot output/benchmark/bench.png
    python tools/benchmark.py --quick                      # small input, a couple of minutes
                                                           # on 2 cores
    python tools/benchmark.py --models gridclip_r50_fpn,faster_rcnn_r50_fpn --profile

Models (random weights: speed does not depend on them), all with the LVIS vocabulary (1203 classes)
and LVIS test settings (score threshold 1e-4, up to 300 detections per image):

* ``gridclip_r50_fpn`` / ``gridclip_r50_bifpn``: ``configs/GridCLIP_LVIS.yaml`` / ``_BiFPN.yaml``
  (CLIP RN50), text classifier of 1203 random unit vectors;
* ``retinanet_r50_fpn``: Detectron2's ``COCO-Detection/retinanet_R_50_FPN_1x.yaml``, 1203 classes
  (the plain one-stage alternative);
* ``faster_rcnn_r50_fpn``: Detectron2's ``COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml``, 1203
  classes (the two-stage alternative, ViLD's structure).

A random ResNet's features are huge, so a random RPN's box deltas give degenerate proposals and a
random Faster R-CNN times an empty second stage. The box-delta convs of every model are therefore
zeroed (boxes = anchors / proposals): each model then does a trained model's full work (1000
proposals x 1203 classes, 300 detections), and the detection count of every model is recorded.

Per model and input size: inference latency per image (batch 1; median, min and max over repeats
after warm-up), images per second at a batch size, detections per image, one training step
(GridCLIP: image-level alignment with the teacher on the fly, with cached teacher embeddings, and
without), peak memory (process RSS on CPU sampled during inference; max allocated on GPU), FLOPs
(fvcore's count of one inference, doubled: fvcore counts a multiply-add as one flop) and the
achieved FLOP/s against the matrix-multiply peak measured in the same run (2 n^3 flops per
n x n product), the image-level teacher's cost per training image (GridCLIP: the whole image and
its grid crops; Faster R-CNN row: a ViLD-style teacher on 300 proposal crops, same CLIP), the time
per stage (backbone trunk, neck, head, decoding), and each model's ratio to Faster R-CNN.
A second table times one training step of the embedded default (``configs/GridCLIP_synthetic.yaml``:
batch 8, 256 px) with the teacher on the fly, cached, and without the image-level alignment.

On a GPU, timings use CUDA events after synchronisation; ``--amp`` runs inference under autocast.

Output: a markdown table on stdout, ``--json`` (``{"machine", "matmul_peak_gflops_per_s",
"models": [one record per model and size], "embedded_default_train": {...}}``) and ``--plot``
(a bar chart PNG).
"""

import gridclip_d2.library_warnings  # noqa: F401  (first: quiets the libraries' warnings)

import argparse
import contextlib
import ctypes
import gc
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

TOOLS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TOOLS)
# gridclip_d2 from the repository, and benchmark_report from beside this file (tools/ is not a
# package): a script has only its own folder on sys.path, an importer may have neither.
sys.path.insert(0, REPO)
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)

from benchmark_report import (  # noqa: E402
    COLUMNS,  # noqa: F401  (the report's columns, as tests/test_benchmark.py reads them)
    REFERENCE,
    add_ratios,
    embedded_table,
    find_record,
    interleaved_table,
    markdown_table,
    plot,
    stages_table,
)

# name -> (config, overrides): the shipped GridCLIP configs, and each lighter-head option alone
GRIDCLIP_CONFIGS = {
    "gridclip_r50_fpn": ("GridCLIP_LVIS.yaml", []),
    "gridclip_r50_fpn_fast": ("GridCLIP_LVIS_fast.yaml", []),
    "gridclip_r50_bifpn": ("GridCLIP_LVIS_BiFPN.yaml", []),
    "gridclip_r50_fpn_embed1x1": ("GridCLIP_LVIS.yaml", ["MODEL.GRIDCLIP.EMBED_KERNEL_SIZE", "1"]),
    "gridclip_r50_fpn_towers2": ("GridCLIP_LVIS.yaml", ["MODEL.GRIDCLIP.NUM_CONVS", "2"]),
}
MODELS = tuple(GRIDCLIP_CONFIGS) + ("retinanet_r50_fpn", "faster_rcnn_r50_fpn")
# what a run without --models times (the head options alone are asked for by name)
DEFAULT_MODELS = (
    "gridclip_r50_fpn",
    "gridclip_r50_fpn_fast",
    "gridclip_r50_bifpn",
    "retinanet_r50_fpn",
    "faster_rcnn_r50_fpn",
)
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}  # --dtype names -> the records' "dtype"
NUM_CLASSES = 1203  # the LVIS vocabulary
DEFAULT_SIZES = ((640, 640), (800, 1333))
QUICK_SIZE = (128, 128)  # a multiple of 128: BiFPN pads to it
QUICK_OVERRIDES = [
    "MODEL.GRIDCLIP.IMAGE_ALIGN.TEACHER_INPUT_SIZE",
    "64",
]  # --quick: small teacher crops
VILD_CROPS = 300  # ViLD's teacher embeds this many proposal crops per training image

logger = logging.getLogger("benchmark")


# ---------------------------------------------------------------------------------------- timing
class Timer:
    """Seconds of ``fn()``: wall clock on CPU, CUDA events after synchronisation on a GPU."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def __call__(self, fn: Callable[[], object]) -> float:
        if not self.cuda:
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start
        torch.cuda.synchronize()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return begin.elapsed_time(end) / 1000.0


def repeat(timer: Timer, fn: Callable[[], object], warmup: int, repeats: int) -> List[float]:
    for _ in range(warmup):
        fn()
    return [timer(fn) for _ in range(repeats)]


def matmul_peak_gflops(device: str, n: int, repeats: int = 10) -> float:
    """Best GFLOP/s of an n x n float32 matrix product (2 n^3 flops). The run measures it at its
    start and its end and keeps the higher: a busy moment lowers it."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    times = repeat(Timer(device), lambda: torch.mm(a, b), warmup=2, repeats=repeats)
    return 2 * n**3 / min(times) / 1e9


class PeakRSS:
    """Peak resident set size of this process (MB) while the context is open, sampled every 5 ms
    from /proc/self/statm (Linux); glibc is asked to return freed memory first."""

    def __init__(self):
        self.peak_mb = 0.0
        self._stop = threading.Event()

    @staticmethod
    def rss_mb() -> float:
        try:
            with open("/proc/self/statm") as f:
                pages = int(f.read().split()[1])
            return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
        except OSError:  # not Linux: the lifetime peak is all there is
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _sample(self):
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.rss_mb())
            self._stop.wait(0.005)

    def __enter__(self):
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.peak_mb = self.rss_mb()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self.rss_mb())


# ---------------------------------------------------------------------------------------- models
def _gridclip_cfg(
    config: str,
    device: str,
    embeddings_npy: str,
    image_align: bool = True,
    extra: Sequence[str] = (),
):
    from gridclip_d2.engine.setup import setup_cfg

    cfg = setup_cfg(
        os.path.join(REPO, "configs", config),
        mode="inference",
        freeze=False,
        overrides=[
            "MODEL.DEVICE",
            device,
            "MODEL.CLIP.WEIGHTS",
            "",  # random CLIP RN50 (seeded)
            "MODEL.GRIDCLIP.TEXT_EMBEDDINGS",
            embeddings_npy,
            "MODEL.GRIDCLIP.VOCABULARY",
            "lvis",
            # the federated loss samples 50 classes from LVIS's class counts, which need the data
            # set on disk; the full 1203-class focal loss is what RetinaNet computes too
            "MODEL.GRIDCLIP.USE_FED_LOSS",
            "False",
            *extra,
        ],
    )
    cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.ENABLED = image_align  # the inference setup turns it off
    return cfg


def _detectron2_cfg(zoo_config: str, device: str):
    from detectron2 import model_zoo

    cfg = model_zoo.get_config(zoo_config)
    cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = ""
    # LVIS test settings (Detectron2's LVIS configs): 1203 classes, threshold 1e-4, 300 detections
    cfg.MODEL.RETINANET.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = 0.0001
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0001
    cfg.TEST.DETECTIONS_PER_IMAGE = 300
    return cfg


def _zero_box_deltas(model: torch.nn.Module, name: str) -> None:
    """Boxes = anchors / proposals, so that a random model does a trained model's work."""
    if name.startswith("retinanet"):
        convs = [model.head.bbox_pred]
    elif name.startswith("faster_rcnn"):
        convs = [
            model.proposal_generator.rpn_head.anchor_deltas,
            model.roi_heads.box_predictor.bbox_pred,
        ]
    else:
        convs = [model.head.bbox_pred]  # GridCLIP: exp(0) = one stride on each side
    with torch.no_grad():
        for conv in convs:
            conv.weight.zero_()
            conv.bias.zero_()


def write_random_embeddings(folder: str, dim: int = 1024, num: int = NUM_CLASSES) -> str:
    """A .npy of ``num`` random unit vectors (a vocabulary's text embeddings, for timing)."""
    path = os.path.join(folder, f"random_{num}x{dim}.npy")
    if not os.path.isfile(path):
        rng = np.random.RandomState(0)
        emb = rng.randn(num, dim).astype(np.float32)
        np.save(path, emb / np.linalg.norm(emb, axis=1, keepdims=True))
    return path


def build(
    name: str, device: str, workdir: str, image_align: bool = True, extra: Sequence[str] = ()
) -> Tuple[torch.nn.Module, object]:
    """(model in eval mode with zeroed box deltas, its config)."""
    from detectron2.modeling import build_model

    if name.startswith("gridclip"):
        config, options = GRIDCLIP_CONFIGS[name]
        npy = write_random_embeddings(workdir)
        cfg = _gridclip_cfg(config, device, npy, image_align, list(options) + list(extra))
    elif name == "retinanet_r50_fpn":
        cfg = _detectron2_cfg("COCO-Detection/retinanet_R_50_FPN_1x.yaml", device)
    else:
        cfg = _detectron2_cfg("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml", device)
    torch.manual_seed(0)
    model = build_model(cfg)
    _zero_box_deltas(model, name)
    return model.eval(), cfg


# ---------------------------------------------------------------------------------------- inputs
def random_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """3 x H x W uint8, smooth enough to look like an image to the anchors' objectness."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)


def train_inputs(
    images: Sequence[torch.Tensor],
    teacher_images: bool,
    grids=(1, 2, 3),
    teacher_size: int = 224,
    num_boxes: int = 5,
    num_classes: int = NUM_CLASSES,
) -> List[dict]:
    """Training inputs with ``num_boxes`` random boxes and, for GridCLIP, the alignment regions."""
    from detectron2.structures import Boxes, Instances

    from gridclip_d2.data.alignment_crops import crop_and_resize, crop_boxes

    out = []
    for i, image in enumerate(images):
        h, w = image.shape[-2:]
        g = torch.Generator().manual_seed(100 + i)
        xy = torch.rand(num_boxes, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = (0.1 + 0.3 * torch.rand(num_boxes, 2, generator=g)) * torch.tensor([w, h])
        inst = Instances(
            (h, w),
            gt_boxes=Boxes(torch.cat([xy, xy + wh], dim=1)),
            gt_classes=torch.randint(0, num_classes, (num_boxes,), generator=g),
        )
        x = {"image": image, "image_id": i, "height": h, "width": w, "instances": inst}
        boxes = crop_boxes(grids, w, h)
        x["align_boxes"] = boxes
        if teacher_images:
            x["teacher_images"] = crop_and_resize(
                image.permute(1, 2, 0).numpy(), boxes, teacher_size
            )
        out.append(x)
    return out


# ---------------------------------------------------------------------------------------- measures
def inference_fn(
    model, images: Sequence[torch.Tensor], amp: bool, device: str, dtype: str = "float32"
):
    """``run()``: one inference of ``images``; under CUDA float16 autocast with ``amp``, under CPU
    bfloat16 autocast with ``dtype`` "bfloat16" (every model alike; GridCLIP's own
    ``MODEL.GRIDCLIP.CPU_BF16`` path, set by :func:`build`, keeps its cosines in float32)."""
    inputs = [{"image": im} for im in images]
    if amp and device.startswith("cuda"):
        autocast = torch.autocast("cuda", dtype=torch.float16)
    elif dtype == "bfloat16":
        autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext()

    def run():
        with torch.no_grad(), autocast:
            return model(inputs)

    return run


def stage_times(model, run: Callable, timer: Timer, repeats: int) -> Dict[str, float]:
    """Median ms per stage (backbone trunk, neck, head / RPN / ROI heads, the rest = decoding)."""
    stages = {}
    backbone = model.backbone
    if hasattr(backbone, "bottom_up"):
        stages["trunk"] = backbone.bottom_up
    stages["backbone"] = backbone
    for attr in ("head", "proposal_generator", "roi_heads"):
        if isinstance(getattr(model, attr, None), torch.nn.Module):
            stages[attr] = getattr(model, attr)
    spent = {k: [] for k in stages}
    current = {}
    cuda = timer.cuda

    def now():
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    handles = []
    for key, module in stages.items():
        handles.append(
            module.register_forward_pre_hook(lambda m, i, key=key: current.__setitem__(key, now()))
        )
        handles.append(
            module.register_forward_hook(
                lambda m, i, o, key=key: spent[key].append(now() - current[key])
            )
        )
    totals = []
    try:
        for _ in range(repeats):
            start = now()
            run()
            totals.append(now() - start)
    finally:
        for h in handles:
            h.remove()
    med = {k: statistics.median(v) * 1000 for k, v in spent.items() if v}
    out = {}
    if "trunk" in med:
        out["trunk"] = med["trunk"]
        out["neck"] = med["backbone"] - med["trunk"]
    else:
        out["backbone"] = med["backbone"]
    for k in ("head", "proposal_generator", "roi_heads"):
        if k in med:
            out[k] = med[k]
    out["decode_and_rest"] = statistics.median(totals) * 1000 - sum(out.values())
    return {k: round(v, 1) for k, v in out.items()}


def count_gflops(model, image: torch.Tensor) -> float:
    """2 x fvcore's count (multiply-adds) of one inference, in GFLOPs (Detectron2's
    ``FlopCountAnalysis``: fvcore's, tracing a model of list[dict] inputs and Instances outputs)."""
    from detectron2.utils.analysis import FlopCountAnalysis

    with torch.no_grad():
        analysis = FlopCountAnalysis(model, [{"image": image}])
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        return 2 * analysis.total() / 1e9


def train_step_fn(model, inputs: List[dict]):
    """One SGD step (forward, losses, backward, update) on ``inputs``; returns the losses."""
    from detectron2.utils.events import EventStorage

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-6, momentum=0.9)
    storage = EventStorage(0)

    def step():
        with storage:
            losses = model(inputs)
            total = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
        return {k: v.detach().item() for k, v in losses.items()}

    return step


def teacher_cost_s(
    cfg, device: str, timer: Timer, num_crops: int, measure_crops: int, repeats: int
) -> float:
    """Seconds of the frozen CLIP image encoder on ``num_crops`` crops of one image, timed on
    ``measure_crops`` of them and scaled linearly (the encoder runs crops independently)."""
    from gridclip_d2.modeling.alignment import encode_teacher_images
    from gridclip_d2.modeling.clip_resnet import build_clip_teacher
    from gridclip_d2.modeling.teacher_cache import teacher_input_size_from_cfg

    teacher = build_clip_teacher(cfg).to(device)
    size = teacher_input_size_from_cfg(cfg)
    crops = torch.randint(0, 256, (measure_crops, 3, size, size), dtype=torch.uint8)
    times = repeat(timer, lambda: encode_teacher_images(teacher, crops), warmup=1, repeats=repeats)
    return statistics.median(times) * num_crops / measure_crops


def _cached_teacher(model, inputs: List[dict]) -> None:
    """Serve the image-level alignment from an in-memory teacher cache of ``inputs`` (what
    ``tools/dump_image_embeddings.py`` writes to disk) instead of the on-the-fly teacher."""
    from gridclip_d2.modeling.teacher_cache import TeacherCache

    align = model.image_alignment
    dim = model.head.embed_dim
    g = torch.Generator().manual_seed(1)
    embeddings = {
        x["image_id"]: torch.nn.functional.normalize(
            torch.randn(len(x["align_boxes"]), dim, generator=g), dim=1
        )
        for x in inputs
    }
    align.cache = TeacherCache.from_dict(
        {"arch": "", "weights": "", "init_seed": 0, "grids": [], "size": 0}, embeddings
    )
    align.teacher = None


def measure_training(
    name: str, model, cfg, images: List[torch.Tensor], timer: Timer, repeats: int
) -> Dict[str, float]:
    """Median seconds of one training step: ``train_step_s`` (GridCLIP: the shipped setting, the
    teacher on the fly), and for GridCLIP also ``train_step_cached_teacher_s`` and
    ``train_step_no_image_align_s``."""
    gridclip = name.startswith("gridclip")
    model.train()
    out = {}
    if gridclip:
        grids = list(cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.GRIDS)
        from gridclip_d2.modeling.teacher_cache import teacher_input_size_from_cfg

        size = teacher_input_size_from_cfg(cfg)
        inputs = train_inputs(
            images,
            teacher_images=True,
            grids=grids,
            teacher_size=size,
            num_classes=model.num_classes,
        )
        out["train_step_s"] = statistics.median(
            repeat(timer, train_step_fn(model, inputs), 1, repeats)
        )
        align = model.image_alignment
        _cached_teacher(model, inputs)
        out["train_step_cached_teacher_s"] = statistics.median(
            repeat(timer, train_step_fn(model, inputs), 1, repeats)
        )
        model.image_alignment = None
        out["train_step_no_image_align_s"] = statistics.median(
            repeat(timer, train_step_fn(model, inputs), 1, repeats)
        )
        model.image_alignment = align
    else:
        inputs = train_inputs(images, teacher_images=False)
        out["train_step_s"] = statistics.median(
            repeat(timer, train_step_fn(model, inputs), 1, repeats)
        )
    model.eval()
    return {k: round(v, 4) for k, v in out.items()}


def benchmark_model(
    name: str, size: Tuple[int, int], args, workdir: str, dtype: str = "float32"
) -> dict:
    """One record (see the module docstring) for model ``name`` at input ``size``, less
    ``achieved_fraction_of_matmul_peak``: the matmul peak is known at the end of the run.
    ``dtype`` "bfloat16": CPU inference under bfloat16 autocast (latency, images/s, detections,
    memory and stages; training, FLOPs and the teacher are float32's)."""
    device, timer = args.device, Timer(args.device)
    h, w = size
    bf16 = dtype == "bfloat16"
    logger.info("%s at %dx%d, %s: building", name, h, w, dtype)
    extra = list(args.overrides)
    if bf16 and name.startswith("gridclip"):
        extra += ["MODEL.GRIDCLIP.CPU_BF16", "True"]
    model, cfg = build(
        name, device, workdir, image_align=name.startswith("gridclip") and not bf16, extra=extra
    )
    image = random_image(h, w)
    run = inference_fn(model, [image], args.amp, device, dtype)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    outputs = []
    with PeakRSS() as rss:
        times = repeat(timer, lambda: outputs.append(run()), args.warmup, args.repeats)
    detections = len(outputs[-1][0]["instances"])
    outputs.clear()
    peak_mb = torch.cuda.max_memory_allocated() / 2**20 if cuda else rss.peak_mb
    logger.info(
        "%s: latency median %.3f s, %d detections", name, statistics.median(times), detections
    )
    batch_images = [random_image(h, w, seed=i) for i in range(args.batch)]
    batch_times = repeat(
        timer, inference_fn(model, batch_images, args.amp, device, dtype), 1, args.batch_repeats
    )
    stages = stage_times(model, run, timer, args.stage_repeats)
    gflops = count_gflops(model, image) if not (args.no_flops or bf16) else float("nan")
    median = statistics.median(times)
    rec = {
        "model": name,
        "size": [h, w],
        "dtype": dtype,
        "latency_ms_median": round(median * 1000, 1),
        "latency_ms_min": round(min(times) * 1000, 1),
        "latency_ms_max": round(max(times) * 1000, 1),
        "images_per_s": round(args.batch / statistics.median(batch_times), 3),
        "batch": args.batch,
        "detections": detections,
        "peak_memory_mb": round(peak_mb, 1),
        "gflops": round(gflops, 2),
        "achieved_gflops_per_s": round(gflops / median, 2),
        "stages_ms": stages,
    }
    if bf16 or args.no_train:
        model = run = None
        gc.collect()
        return rec
    train_images = [random_image(h, w, seed=10 + i) for i in range(args.train_batch)]
    rec.update(measure_training(name, model, cfg, train_images, timer, args.train_repeats))
    rec["train_batch"] = args.train_batch
    if name.startswith("gridclip") or name == REFERENCE:
        from gridclip_d2.data.alignment_crops import num_regions

        tcfg = (
            cfg
            if name.startswith("gridclip")
            else build_teacher_cfg(device, workdir, args.overrides)
        )
        crops = (
            num_regions(tcfg.MODEL.GRIDCLIP.IMAGE_ALIGN.GRIDS)
            if name.startswith("gridclip")
            else VILD_CROPS
        )
        rec["teacher_crops_per_image"] = crops
        rec["teacher_s_per_image"] = round(
            teacher_cost_s(
                tcfg,
                device,
                timer,
                crops,
                min(crops, args.teacher_measure_crops),
                args.train_repeats,
            ),
            4,
        )
    model = run = None  # freed before the next model is built
    gc.collect()
    return rec


def interleaved_latency(size: Tuple[int, int], args, workdir: str) -> List[dict]:
    """Latency of every model and dtype timed in turns: ``args.interleaved`` rounds, each running
    every model once, so that a slow moment of a shared machine slows all of them alike. Per model
    and dtype: the median and min-max ms, and the median over rounds of the ratio to the same
    round's Faster R-CNN (same dtype) and, for bfloat16, to the same model's float32."""
    device, timer = args.device, Timer(args.device)
    image = random_image(*size)
    runs = {}
    for name in args.models:
        for dtype in args.dtypes:
            extra = list(args.overrides)
            if dtype == "bfloat16" and name.startswith("gridclip"):
                extra += ["MODEL.GRIDCLIP.CPU_BF16", "True"]
            model, _ = build(name, device, workdir, image_align=False, extra=extra)
            run = inference_fn(model, [image], args.amp, device, dtype)
            for _ in range(max(args.warmup, 1)):
                run()
            runs[(name, dtype)] = run
    times = {key: [] for key in runs}
    for _ in range(args.interleaved):
        for key, run in runs.items():
            times[key].append(timer(run) * 1000)
    rows = []
    for (name, dtype), ms in times.items():
        row = {
            "model": name,
            "size": list(size),
            "dtype": dtype,
            "rounds": len(ms),
            "latency_ms_median": round(statistics.median(ms), 1),
            "latency_ms_min": round(min(ms), 1),
            "latency_ms_max": round(max(ms), 1),
        }
        for key, ref in (
            ("ratio_to_faster_rcnn", (REFERENCE, dtype)),
            ("ratio_to_float32", (name, "float32")),
        ):
            if ref in times and ref != (name, dtype):
                ratios = [a / b for a, b in zip(ms, times[ref])]
                row[key] = round(statistics.median(ratios), 3)
                row[key + "_min_max"] = [round(min(ratios), 3), round(max(ratios), 3)]
        rows.append(row)
    runs.clear()
    gc.collect()
    return rows


def build_teacher_cfg(device: str, workdir: str, extra: Sequence[str] = ()):
    """The GridCLIP config whose CLIP (RN50) is the teacher of a ViLD-style Faster R-CNN."""
    return _gridclip_cfg(
        "GridCLIP_LVIS.yaml", device, write_random_embeddings(workdir), True, extra
    )


def embedded_default_training(args) -> Dict[str, float]:
    """Seconds per training step of ``configs/GridCLIP_synthetic.yaml`` (batch 8, 256 px, random
    small CLIP) with grid regions: image-level alignment with the teacher on the fly, cached, and
    off."""
    from detectron2.modeling import build_model

    from gridclip_d2.engine.setup import setup_cfg

    cfg = setup_cfg(
        os.path.join(REPO, "configs", "GridCLIP_synthetic.yaml"),
        mode="inference",
        freeze=False,
        overrides=["MODEL.DEVICE", args.device, "MODEL.CLIP.WEIGHTS", ""],
    )
    cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.ENABLED = True
    # the grid regions, whose teacher outputs can be cached (the config's proposal regions are
    # made by each step and embedded on the fly: their cost is in docs/results.md's timings)
    cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.REGIONS = "grids"
    torch.manual_seed(0)
    model = build_model(cfg)
    side = cfg.INPUT.MIN_SIZE_TRAIN[0]
    images = [random_image(side, side, seed=20 + i) for i in range(cfg.SOLVER.IMS_PER_BATCH)]
    rec = measure_training(
        "gridclip_embedded_default", model, cfg, images, Timer(args.device), args.embedded_repeats
    )
    rec = {
        "config": "configs/GridCLIP_synthetic.yaml",
        "batch": len(images),
        "size": [side, side],
        **rec,
    }
    base = rec["train_step_no_image_align_s"]
    rec["teacher_on_the_fly_overhead"] = round(rec["train_step_s"] / base - 1, 3)
    rec["cached_teacher_overhead"] = round(rec["train_step_cached_teacher_s"] / base - 1, 3)
    return rec


# ---------------------------------------------------------------------------------------- machine
def machine_description(device: str) -> str:
    if device.startswith("cuda"):
        return (
            f"{torch.cuda.get_device_name()}, CUDA {torch.version.cuda}, torch {torch.__version__}"
        )
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu
            )
    return (
        f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}"
    )


# ---------------------------------------------------------------------------------------- main
def parse_args(argv: Optional[Sequence[str]] = None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"small input ({QUICK_SIZE[0]}x{QUICK_SIZE[1]}), 64 px teacher crops, few repeats: a "
        "smoke test",
    )
    p.add_argument(
        "--size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="input height and width (default: 640x640 and 800x1333)",
    )
    p.add_argument(
        "--models", default=",".join(DEFAULT_MODELS), help=f"comma list of {', '.join(MODELS)}"
    )
    p.add_argument("--json", default="", help="write the records to this JSON file")
    p.add_argument("--plot", default="", help="write a bar chart of the latencies to this PNG")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true", help="inference under CUDA autocast (float16)")
    p.add_argument(
        "--dtype",
        default="fp32",
        help="comma list of fp32, bf16: CPU inference in each (bf16: autocast, every model; "
        "needs AMX or AVX-512 BF16 units)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=None, help="timed inference repeats (default 5)")
    p.add_argument(
        "--warmup", type=int, default=None, help="untimed inference runs first (default 1)"
    )
    p.add_argument("--batch", type=int, default=None, help="batch size of images/s (CPU 2, GPU 8)")
    p.add_argument(
        "--train-batch", type=int, default=None, help="images per training step (CPU 1, GPU 2)"
    )
    p.add_argument("--no-flops", action="store_true", help="skip the fvcore FLOP count")
    p.add_argument(
        "--interleaved",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="also time every model and dtype in turns for ROUNDS rounds (ratios per round: "
        "robust to a shared machine's slow moments)",
    )
    p.add_argument(
        "--no-train",
        action="store_true",
        help="time inference only (no training step, no teacher cost)",
    )
    p.add_argument(
        "--no-embedded", action="store_true", help="skip the embedded default's training-step table"
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="also print torch.profiler's per-op table of one inference per model",
    )
    args = p.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        p.error(
            f"--models: unknown model(s) {unknown or args.models!r}; "
            f"choose from {', '.join(MODELS)}"
        )
    args.models = models
    if args.size is not None and (args.size[0] < 32 or args.size[1] < 32 or max(args.size) > 4096):
        p.error(
            f"--size: H and W must be between 32 and 4096 pixels, got {args.size[0]} {args.size[1]}"
        )
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if args.amp and not args.device.startswith("cuda"):
        p.error("--amp: autocast here is a GPU feature (float32 on CPU)")
    dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
    if not dtypes or any(d not in DTYPES for d in dtypes):
        p.error(f"--dtype: {args.dtype!r}; choose a comma list of {', '.join(DTYPES)}")
    args.dtypes = [DTYPES[d] for d in dict.fromkeys(dtypes)]
    if "bfloat16" in args.dtypes:
        from gridclip_d2.modeling.cpu_bf16 import cpu_bf16_units

        if args.device.startswith("cuda"):
            p.error("--dtype bf16: CPU bfloat16 autocast; on a GPU use --amp")
        if cpu_bf16_units() is None:
            p.error(
                "--dtype bf16: this CPU has neither AMX nor AVX-512 BF16 units (bfloat16 would "
                "be emulated, slower than float32)"
            )
    cuda = args.device.startswith("cuda")
    args.sizes = (
        [tuple(args.size)] if args.size else ([QUICK_SIZE] if args.quick else list(DEFAULT_SIZES))
    )
    quick = args.quick
    args.repeats = args.repeats or (2 if quick else 5)
    args.warmup = args.warmup if args.warmup is not None else 1
    args.batch = args.batch or (2 if quick or not cuda else 8)
    args.batch_repeats = 1 if quick else 2
    args.stage_repeats = 1 if quick else 2
    args.train_batch = args.train_batch or (2 if cuda else 1)
    args.train_repeats = 1 if quick else 2
    args.embedded_repeats = 2 if quick else 7
    args.teacher_measure_crops = 14 if quick else 60
    args.matmul_n = 1024 if quick else 2048
    args.overrides = QUICK_OVERRIDES if quick else []
    return args


def profile_inference(model_name: str, args, workdir: str, size: Tuple[int, int]) -> str:
    """torch.profiler's per-op table (self time) of one inference after a warm-up."""
    from torch.profiler import ProfilerActivity, profile

    model, _ = build(model_name, args.device, workdir, image_align=False, extra=args.overrides)
    run = inference_fn(model, [random_image(*size)], args.amp, args.device)
    run()
    acts = [ProfilerActivity.CPU] + (
        [ProfilerActivity.CUDA] if args.device.startswith("cuda") else []
    )
    with profile(activities=acts) as prof:
        run()
    key = "self_cuda_time_total" if args.device.startswith("cuda") else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=15)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S"
    )
    for noisy in ("detectron2", "fvcore", "gridclip_d2", "fvcore.nn.jit_analysis"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    # Random weights (CLIP zero-initialises each block's last BN) leave many activations denormal,
    # which x86 CPUs compute tens of times slower than normal floats; a trained model has none.
    # Flushing them to zero times the work a trained model does (all models alike).
    flushed = torch.set_flush_denormal(True)
    import gridclip_d2  # noqa: F401  (registers GridCLIP)
    from gridclip_d2.atomic_write import atomic_json_dump

    machine = machine_description(args.device)
    peak = matmul_peak_gflops(args.device, args.matmul_n)
    logger.info("%s; float32 matmul peak %.1f GFLOP/s", machine, peak)
    records = []
    total = len(args.models) * len(args.sizes) * len(args.dtypes)
    start = time.time()
    with tempfile.TemporaryDirectory() as workdir:
        for size in args.sizes:
            for name in args.models:
                for dtype in args.dtypes:  # interleaved: each model's dtypes back to back
                    records.append(benchmark_model(name, size, args, workdir, dtype))
                    done = len(records)
                    eta = (time.time() - start) / done * (total - done)
                    logger.info("%d/%d models done, ETA %.0f s", done, total, eta)
                if args.profile:
                    print(
                        f"\n{name} {size[0]}x{size[1]}: torch.profiler, one inference\n"
                        + profile_inference(name, args, workdir, size)
                    )
        interleaved = (
            [row for size in args.sizes for row in interleaved_latency(size, args, workdir)]
            if args.interleaved
            else []
        )
        embedded = None if args.no_embedded else embedded_default_training(args)
    peak = max(peak, matmul_peak_gflops(args.device, args.matmul_n))
    for rec in records:
        if rec["dtype"] == "bfloat16":  # the same work as float32's record
            fp32 = find_record(records, rec["model"], rec, "float32")
            if fp32 is not None:
                rec["gflops"] = fp32["gflops"]
                rec["achieved_gflops_per_s"] = round(
                    fp32["gflops"] / rec["latency_ms_median"] * 1000, 2
                )
        rec["achieved_fraction_of_matmul_peak"] = (
            None
            if rec["dtype"] == "bfloat16"  # against a float32 peak it would mean nothing
            else round(rec["achieved_gflops_per_s"] / peak, 3)
        )
    add_ratios(records)
    result = {
        "machine": machine,
        "device": args.device,
        "amp": bool(args.amp),
        "flush_denormal": flushed,
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["tools/benchmark.py"] + list(argv or sys.argv[1:])),
        "matmul_peak_gflops_per_s": round(peak, 1),
        "models": records,
    }
    if interleaved:
        result["interleaved"] = interleaved
    if embedded is not None:
        result["embedded_default_train"] = embedded
    print(f"\n{machine}; float32 matmul peak {peak:.1f} GFLOP/s\n")
    print(markdown_table(records))
    print()
    print(stages_table(records))
    if interleaved:
        print()
        print(interleaved_table(interleaved))
    if embedded is not None:
        print()
        print(embedded_table(embedded))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        atomic_json_dump(result, args.json, indent=1)
    if args.plot:
        plot(records, args.plot, machine)
    return result


if __name__ == "__main__":
    main()
