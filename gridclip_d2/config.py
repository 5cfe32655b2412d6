"""Config keys of gridclip_d2, added to a Detectron2 config by :func:`add_gridclip_config`.

Detectron2's own keys keep their meaning (MODEL.BACKBONE.FREEZE_AT, MODEL.FPN.*, INPUT.*, SOLVER.*,
TEST.DETECTIONS_PER_IMAGE, DATALOADER.SAMPLER_TRAIN, ...). Only what Detectron2 lacks is added here.
Below them, what several layers read off a config (the data mapper and the model alike).
"""

import os

from detectron2.config import CfgNode as CN

from .clip_arch import CLIP_ARCHS  # a table of numbers (no torch, no modules)

__all__ = ["add_gridclip_config", "teacher_input_size_from_cfg", "cache_in_use"]


def add_gridclip_config(cfg):
    """Add gridclip_d2's keys to ``cfg`` in place. Safe to call more than once."""
    _C = cfg
    if "CLIP" in _C.MODEL and "GRIDCLIP" in _C.MODEL:
        return cfg

    # ---------------------------------------------------------------- CLIP backbone and weights
    _C.MODEL.CLIP = CN()
    # CLIP ResNet architecture: RN50, RN101, RN50x4, RN50x16, RN50x64, or the reduced RNtiny /
    # RNtiny96 (same ModifiedResNet class, fewer blocks and channels; RNtiny96 is the embedded
    # default's small CLIP).
    _C.MODEL.CLIP.ARCH = "RN50"
    # OpenAI model name (looked up in the clip package's cache dir), a checkpoint path (TorchScript
    # archive or plain state dict), "synthetic" (the small RNtiny96 CLIP pretrained on synthetic
    # image-caption pairs, made on first use) or "" (random initialisation from INIT_SEED).
    _C.MODEL.CLIP.WEIGHTS = ""
    # Folder where OpenAI model names are looked up / downloaded; "" = the clip package default.
    _C.MODEL.CLIP.DOWNLOAD_ROOT = ""
    # Seed of the random initialisation when WEIGHTS is "": a fixed seed makes the random CLIP
    # (backbone, teacher and text encoder) the same model in every process and every run.
    _C.MODEL.CLIP.INIT_SEED = 0
    # Normalisation of the CLIP ResNet: "FrozenBN" (pretrained weights), "BN" or "SyncBN" (training
    # from random weights must keep normalisation trainable).
    _C.MODEL.CLIP.NORM = "FrozenBN"
    # Stages returned by the backbone (subset of res2..res5).
    _C.MODEL.CLIP.OUT_FEATURES = ["res3", "res4", "res5"]

    # MODEL.WEIGHTS must fill every tensor of the model (another architecture's weights are an error
    # naming the file); True loads what fits and only logs the rest (fine-tuning from part of a
    # model).
    _C.MODEL.ALLOW_PARTIAL_WEIGHTS = False

    # ---------------------------------------------------------------- BiFPN neck
    _C.MODEL.BIFPN = CN()
    # Input stages of the BiFPN (P3..P5 come from these; P6, P7 are made by downsampling).
    _C.MODEL.BIFPN.IN_FEATURES = ["res3", "res4", "res5"]
    # Channels of every BiFPN level.
    _C.MODEL.BIFPN.OUT_CHANNELS = 256
    # Number of stacked BiFPN layers.
    _C.MODEL.BIFPN.NUM_REPEATS = 3
    # Normalisation after each fusion conv: "GN", "BN", "SyncBN" or "".
    _C.MODEL.BIFPN.NORM = "GN"

    # ---------------------------------------------------------------- GridCLIP head
    _C.MODEL.GRIDCLIP = CN()
    # Pyramid levels the head runs on.
    _C.MODEL.GRIDCLIP.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    # Convs in each of the classification and regression towers.
    _C.MODEL.GRIDCLIP.NUM_CONVS = 4
    # Normalisation in the towers ("GN" as in FCOS, or "").
    _C.MODEL.GRIDCLIP.HEAD_NORM = "GN"
    # Prior probability that sets the initial classification bias.
    _C.MODEL.GRIDCLIP.PRIOR_PROB = 0.01
    # Initial (or fixed) temperature multiplying cosine similarities to give logits.
    _C.MODEL.GRIDCLIP.TEMPERATURE = 50.0
    # Learn the temperature (True) or keep it fixed (False).
    _C.MODEL.GRIDCLIP.LEARN_TEMPERATURE = True
    # Focal loss parameters of the grid-level alignment (classification) loss.
    _C.MODEL.GRIDCLIP.FOCAL_LOSS_ALPHA = 0.25
    _C.MODEL.GRIDCLIP.FOCAL_LOSS_GAMMA = 2.0
    # FCOS centre-sampling radius, in units of the level's stride.
    _C.MODEL.GRIDCLIP.CENTER_SAMPLING_RADIUS = 1.5
    # Inference: score threshold (LVIS protocol: very low), top-k candidates per level, NMS IoU.
    # The number of detections per image is Detectron2's TEST.DETECTIONS_PER_IMAGE.
    _C.MODEL.GRIDCLIP.SCORE_THRESH_TEST = 1e-4
    _C.MODEL.GRIDCLIP.TOPK_CANDIDATES_TEST = 1000
    _C.MODEL.GRIDCLIP.NMS_THRESH_TEST = 0.6
    # CPU inference with the convolutions in bfloat16 (autocast; cosines and decoding stay float32),
    # where the CPU has AMX or AVX-512 BF16 units; elsewhere it logs why and runs float32.
    # See docs/benchmarks.md for its speed and its AP against float32.
    _C.MODEL.GRIDCLIP.CPU_BF16 = False
    # What the predictor, demo and web page show (gridclip_d2.predictor; evaluation is unaffected):
    # detections scoring at least SCORE_THRESH, after a class-agnostic NMS at IoU NMS_THRESH that
    # keeps one box and one label per object (1.0 = off). tools/display_threshold.py picks
    # SCORE_THRESH from a labelled set.
    _C.MODEL.GRIDCLIP.DISPLAY = CN()
    _C.MODEL.GRIDCLIP.DISPLAY.SCORE_THRESH = 0.3
    _C.MODEL.GRIDCLIP.DISPLAY.NMS_THRESH = 0.5
    # Levels (e.g. ["p5"]) whose grid embeddings also receive the backbone's dense CLIP embedding
    # (attention-pool value+output projections at every res5 location); [] = off.
    _C.MODEL.GRIDCLIP.DENSE_CLIP_LEVELS = []
    # Grid-embedding projection: "random" (one 3x3 conv to D) or "clip" (1x1 conv to res5's width,
    # then a 1x1 conv to D initialised with CLIP's attention-pool value + output projections).
    _C.MODEL.GRIDCLIP.EMBED_INIT = "random"
    # Kernel of the "random" grid-embedding conv: 3 (the paper's head) or 1 (lighter: at 256
    # channels and D = 1024 the 3x3 conv is about a sixth of the detector's arithmetic; see
    # docs/benchmarks.md for its speed and AP).
    _C.MODEL.GRIDCLIP.EMBED_KERNEL_SIZE = 3
    # Frozen classifier: a C x D .npy of text embeddings (tools/dump_text_embeddings.py) whose rows
    # follow the vocabulary; its .json sidecar is checked against the vocabulary, MODEL.CLIP and the
    # prompts. "" = compute them at build time with CLIP's text encoder.
    _C.MODEL.GRIDCLIP.TEXT_EMBEDDINGS = ""
    # The model's vocabulary (class names, in class-id order), so that a model builds from its
    # config alone: "lvis" / "synthetic" (built-in), or a .txt (one name per line) / .json (list of
    # names, or a text-embedding sidecar) file. "" with CLASS_NAMES [] = the names in
    # TEXT_EMBEDDINGS' sidecar, else the training set's thing_classes (training writes them into the
    # saved config.yaml).
    _C.MODEL.GRIDCLIP.VOCABULARY = ""
    # The vocabulary as a list of names (exclusive with VOCABULARY).
    _C.MODEL.GRIDCLIP.CLASS_NAMES = []
    # Prompt used when embeddings are computed at build time ("{}" is the category name).
    _C.MODEL.GRIDCLIP.PROMPT = "a {}"
    # Average over the ViLD/CLIP photo-template ensemble instead of the single PROMPT.
    _C.MODEL.GRIDCLIP.PROMPT_ENSEMBLE = False
    # Federated loss (LVIS): classification loss only on the image's classes plus classes sampled
    # by frequency**FED_LOSS_FREQ_WEIGHT, FED_LOSS_NUM_CLASSES in all per batch.
    _C.MODEL.GRIDCLIP.USE_FED_LOSS = False
    _C.MODEL.GRIDCLIP.FED_LOSS_NUM_CLASSES = 50
    _C.MODEL.GRIDCLIP.FED_LOSS_FREQ_WEIGHT = 0.5
    # Exclude the training set's novel classes (metadata "novel_class_ids", e.g. LVIS rare on the
    # base split) from the classification loss, so they are never pushed down as negatives.
    _C.MODEL.GRIDCLIP.IGNORE_NOVEL_CLASSES = True

    # ---------------------------------------------------------------- image-level alignment
    _C.MODEL.GRIDCLIP.IMAGE_ALIGN = CN()
    # Turn the image-level alignment loss on or off.
    _C.MODEL.GRIDCLIP.IMAGE_ALIGN.ENABLED = True
    # Weight of the L1 loss between normalised student (pooled grid) and teacher embeddings.
    _C.MODEL.GRIDCLIP.IMAGE_ALIGN.LOSS_WEIGHT = 1.0
    # The regions whose pooled grid embeddings are aligned with the teacher's embedding of them:
    # "grids": the whole image and its crops (GRIDS; the paper's image-level alignment);
    # "proposals": the detector's own top NUM_PROPOSALS class-agnostic boxes of each training step
    # (ViLD's form: the teacher embeds a square crop of twice each box's longer side, on the fly;
    # ground truth is never read).
    _C.MODEL.GRIDCLIP.IMAGE_ALIGN.REGIONS = "grids"
    # Crop grids of REGIONS "grids": 1 = whole image, 2 = 2x2 crops, 3 = 3x3 crops, ...
    _C.MODEL.GRIDCLIP.IMAGE_ALIGN.GRIDS = [1, 2, 3]
    # Boxes per image of REGIONS "proposals" (after NMS at PROPOSAL_NMS_THRESH).
    _C.MODEL.GRIDCLIP.IMAGE_ALIGN.NUM_PROPOSALS = 10
    _C.MODEL.GRIDCLIP.IMAGE_ALIGN.PROPOSAL_NMS_THRESH = 0.5
    # REGIONS "proposals": weight each proposal's loss by 1 - the detector's best probability for
    # a base class (one of the classification loss) at its location, so that CLIP's knowledge is
    # distilled where the trained classes do not explain the object, and the base classes' grid
    # embeddings stay with their text embeddings. Predictions only: ground truth is never read.
    _C.MODEL.GRIDCLIP.IMAGE_ALIGN.WEIGHT_BY_NOVELTY = False
    # Levels (of MODEL.GRIDCLIP.IN_FEATURES) whose grid embeddings are pooled, averaged over them;
    # [] = every level.
    _C.MODEL.GRIDCLIP.IMAGE_ALIGN.LEVELS = []
    # How grid embeddings are pooled over a region: "mean" or "max".
    _C.MODEL.GRIDCLIP.IMAGE_ALIGN.POOL = "mean"
    # Side of the square teacher input each crop is resized to; 0 = the architecture's resolution.
    _C.MODEL.GRIDCLIP.IMAGE_ALIGN.TEACHER_INPUT_SIZE = 0
    # Teacher embeddings precomputed by tools/dump_image_embeddings.py. "" or a file that does not
    # exist = the teacher runs on the fly; with the file, no teacher is built and every training
    # image must be in it (an error names the missing image id).
    _C.MODEL.GRIDCLIP.IMAGE_ALIGN.CACHE_FILE = ""

    # ---------------------------------------------------------------- data
    _C.DATASETS.GRIDCLIP = CN()
    # A user's own LVIS-format data set, with no code: name, json and image folder for train and
    # test. When NAME is set, <NAME>_train / <NAME>_test are registered and become DATASETS.TRAIN /
    # DATASETS.TEST; without TEST_JSON, DATASETS.TEST is emptied (nothing is evaluated, and the log
    # says so).
    _C.DATASETS.GRIDCLIP.NAME = ""
    _C.DATASETS.GRIDCLIP.TRAIN_JSON = ""
    _C.DATASETS.GRIDCLIP.TRAIN_IMAGES = ""
    _C.DATASETS.GRIDCLIP.TEST_JSON = ""
    _C.DATASETS.GRIDCLIP.TEST_IMAGES = ""
    # The open-vocabulary split of that data set: names of its novel categories (their training
    # boxes are dropped, they are left out of the classification loss, and the evaluation reports
    # AP novel / AP base), or ["auto"]: the categories without training annotations. [] = no split.
    _C.DATASETS.GRIDCLIP.NOVEL_CLASSES = []

    # ---------------------------------------------------------------- training extras
    # Save a PNG of the training curves next to metrics.json at the end of training.
    _C.SOLVER.PLOT_CURVES = True
    return cfg


def teacher_input_size_from_cfg(cfg) -> int:
    """IMAGE_ALIGN.TEACHER_INPUT_SIZE, or the CLIP architecture's native resolution when 0."""
    size = int(cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.TEACHER_INPUT_SIZE)
    if size > 0:
        return size
    if size < 0:
        raise ValueError(f"MODEL.GRIDCLIP.IMAGE_ALIGN.TEACHER_INPUT_SIZE must be >= 0, got {size}")
    arch = cfg.MODEL.CLIP.ARCH
    if arch not in CLIP_ARCHS:
        raise ValueError(f"MODEL.CLIP.ARCH {arch!r} is not one of {sorted(CLIP_ARCHS)}")
    return int(CLIP_ARCHS[arch].image_resolution)


def cache_in_use(cfg) -> bool:
    """True when IMAGE_ALIGN.CACHE_FILE is set and exists: teacher outputs come from the file, so
    neither the on-the-fly teacher nor the mapper's ``teacher_images`` are needed."""
    path = cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.CACHE_FILE
    return bool(path) and os.path.isfile(path)
