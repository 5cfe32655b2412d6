#!/usr/bin/env python
"""GridCLIP demo: detect the classes of any vocabulary in images, folders, a video or a webcam.

    python demo/demo.py --config-file configs/GridCLIP_LVIS.yaml --input a.jpg b.jpg --output out/ \
        --vocabulary custom --custom-vocabulary "zebra,traffic cone,kite" --opts MODEL.WEIGHTS m.pth
    python demo/demo.py --config-file CFG --input photos/ --output out/ --vocabulary lvis --opts ...
    python demo/demo.py --config-file CFG --input photos/ --output out/ --opts ... \
        --query-image "my mug=examples/mug.jpg:40,60,210,300" --query-image "my mug=mug2.jpg"
    python demo/demo.py --config-file CFG --video-input v.mp4 --output out/ --opts ...
    python demo/demo.py --config-file CFG --webcam --opts ...

``--input`` takes image files, folders (their images, sorted) and glob patterns. Drawn images are
written to ``--output`` (a folder, or a file name for a single input) under the input's file name;
without ``--output`` they are shown in a window. Inputs are never overwritten, nor files the demo
did not write (unless ``--overwrite``); outputs are checked before the model is built.

``--query-image NAME=PATH[:x0,y0,x1,y1]`` (repeatable) adds a class given by an example: the image
(or the box of it, in its pixels) is embedded by the model's CLIP image encoder and detections like
it are named NAME; several examples of one name are averaged. With ``--vocabulary`` the examples'
classes join the named ones; without, only the examples' classes are detected.
"""

import gridclip_d2.library_warnings  # noqa: F401  (first: quiets the libraries' warnings)

import argparse
import glob
import json
import logging
import os
import sys
import time

import cv2
import tqdm

from detectron2.utils.logger import setup_logger

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for `predictor` next to this file
from predictor import VisualizationDemo  # noqa: E402

from gridclip_d2.data.image_io import read_image  # noqa: E402
from gridclip_d2.engine import setup_cfg as setup_cfg_for  # noqa: E402
from gridclip_d2.predictor import config_with_vocabulary  # noqa: E402
from gridclip_d2.vocabulary import (  # noqa: E402
    VOCABULARY_CHOICES,
    builtin_vocabulary,
    parse_query_image,
    parse_vocabulary,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv")
FILE_EXTENSIONS = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
WINDOW_NAME = "GridCLIP detections"
logger = logging.getLogger("gridclip_d2.demo")


def get_parser():
    parser = argparse.ArgumentParser(description="GridCLIP demo (open-vocabulary detection)")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to config file")
    parser.add_argument("--input", nargs="+", help="image files, folders or glob patterns")
    parser.add_argument("--video-input", help="path to a video file")
    parser.add_argument("--webcam", action="store_true", help="take frames from webcam 0")
    parser.add_argument(
        "--output",
        help="folder to write results to (or an image / .mp4 file name for a single "
        "input); shown in a window when absent",
    )
    parser.add_argument(
        "--vocabulary",
        choices=VOCABULARY_CHOICES,
        default=None,
        help="classes to detect; default: the model's vocabulary (MODEL.GRIDCLIP.CLASS_NAMES / "
        "VOCABULARY / the TEXT_EMBEDDINGS sidecar / the training set's classes)",
    )
    parser.add_argument(
        "--custom-vocabulary",
        default="",
        help="for --vocabulary custom: comma-separated class names, or a .txt (one a line) / "
        ".json (list of names) / .npy (text embeddings with their sidecar) file",
    )
    parser.add_argument(
        "--query-image",
        action="append",
        default=[],
        metavar="NAME=PATH[:x0,y0,x1,y1]",
        help="a class given by an example image or a box of it (pixels); repeatable, several "
        "examples of one NAME are averaged; joins --vocabulary's classes, or is the only one",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=(
            "overwrite existing output files the demo did not write (inputs are never overwritten)"
        ),
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=None,
        help="minimum score of drawn detections (default: MODEL.GRIDCLIP.DISPLAY.SCORE_THRESH)",
    )
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="CPU inference in bfloat16 (MODEL.GRIDCLIP.CPU_BF16) where the CPU has AMX or "
        "AVX-512 BF16; elsewhere it says so and runs float32",
    )
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs"
    )
    return parser


def setup_cfg(args):
    """The config for inference (``gridclip_d2.engine.setup_cfg``: no training data, no teacher, CPU
    when there is no CUDA). A vocabulary given on the command line becomes the model's
    (``gridclip_d2.predictor.config_with_vocabulary``: MODEL.GRIDCLIP.CLASS_NAMES, embedded once
    when the model is built; the config's TEXT_EMBEDDINGS file is only used when its sidecar lists
    exactly these names)."""
    vocabulary = vocabulary_from_args(args)
    cfg = setup_cfg_for(args.config_file, args.opts, mode="inference", freeze=False)
    if args.bf16:
        cfg.MODEL.GRIDCLIP.CPU_BF16 = True
    if vocabulary is not None:
        cfg = config_with_vocabulary(cfg, vocabulary)
    cfg.freeze()
    return cfg


def query_images_from_args(args):
    """The ``--query-image`` exemplars (``gridclip_d2.vocabulary.ImageExemplar``), their syntax and
    files checked (before the model is built); the pixels are checked when they are embedded."""
    exemplars = [parse_query_image(text) for text in args.query_image]
    for exemplar, text in zip(exemplars, args.query_image):
        if not os.path.isfile(exemplar.image):
            raise FileNotFoundError(f"--query-image {text!r}: no such image file: {exemplar.image}")
    return exemplars


def vocabulary_from_args(args):
    """The chosen vocabulary (``gridclip_d2.vocabulary.Vocabulary``), or None to keep the model's.
    ``--custom-vocabulary`` is parsed by ``parse_vocabulary``, as every entry point parses it."""
    if args.custom_vocabulary and args.vocabulary not in (None, "custom"):
        raise ValueError(
            f"--custom-vocabulary is only used with --vocabulary custom, "
            f"not --vocabulary {args.vocabulary}"
        )
    if args.vocabulary is None and args.custom_vocabulary:
        args.vocabulary = "custom"
    if args.vocabulary is None:
        return None
    if args.vocabulary == "custom":
        if not args.custom_vocabulary.strip():
            raise ValueError(
                '--vocabulary custom needs --custom-vocabulary "name1,name2,..." '
                "or a .txt / .json / .npy vocabulary file"
            )
        return parse_vocabulary(args.custom_vocabulary, what="--custom-vocabulary")
    return builtin_vocabulary(args.vocabulary)


def collect_inputs(patterns):
    """Image paths from files, folders and glob patterns; an error names every one that matches
    nothing."""
    paths, missing = [], []
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        if os.path.isdir(pattern):
            found = sorted(
                os.path.join(pattern, f)
                for f in os.listdir(pattern)
                if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(pattern, f))
            )
            if not found:
                missing.append(f"{pattern} (folder without images)")
            paths += found
        elif os.path.isfile(pattern):
            paths.append(pattern)
        elif glob.has_magic(pattern) and sorted(glob.glob(pattern)):
            paths += [p for p in sorted(glob.glob(pattern)) if os.path.isfile(p)]
        else:
            missing.append(pattern)
    if missing:
        raise FileNotFoundError("--input: not found: " + ", ".join(missing))
    return list(dict.fromkeys(paths))  # drop repeats, keep order


MANIFEST = ".gridclip_demo_outputs.json"  # what the demo wrote in a folder: it may overwrite those


def _written_by_demo(path):
    manifest = os.path.join(os.path.dirname(os.path.abspath(path)), MANIFEST)
    try:
        with open(manifest, encoding="utf-8") as f:
            return os.path.basename(path) in set(json.load(f))
    except (OSError, ValueError):
        return False


def record_outputs(paths):
    """Add ``paths`` to their folders' manifests (what a later run may overwrite)."""
    by_folder = {}
    for p in paths:
        by_folder.setdefault(os.path.dirname(os.path.abspath(p)), []).append(os.path.basename(p))
    for folder, names in by_folder.items():
        manifest = os.path.join(folder, MANIFEST)
        try:
            with open(manifest, encoding="utf-8") as f:
                known = list(json.load(f))
        except (OSError, ValueError):
            known = []
        with open(manifest + ".tmp", "w", encoding="utf-8") as f:
            json.dump(sorted(set(known) | set(names)), f)
        os.replace(manifest + ".tmp", manifest)


def output_paths(inputs, output, overwrite=False):
    """Where each input's result goes, checked before any model is built: refuses to overwrite an
    input, to write two results to one file, to use an existing file as a folder, and to overwrite a
    file the demo did not write (unless ``overwrite``)."""
    as_folder = (
        os.path.isdir(output) or len(inputs) > 1 or not output.lower().endswith(FILE_EXTENSIONS)
    )
    if as_folder and os.path.exists(output) and not os.path.isdir(output):
        raise ValueError(
            f"--output: {output} is an existing file, but {len(inputs)} inputs need a folder"
        )
    outs = [os.path.join(output, os.path.basename(p)) for p in inputs] if as_folder else [output]
    seen = {}
    for src, dst in zip(inputs, outs):
        if os.path.realpath(dst) in seen:
            raise ValueError(
                f"--output: {seen[os.path.realpath(dst)]} and {src} would both be "
                f"written to {dst}; give them distinct file names"
            )
        seen[os.path.realpath(dst)] = src
    input_set = {os.path.realpath(p) for p in inputs}
    clash = [d for d in outs if os.path.realpath(d) in input_set]
    if clash:
        raise ValueError(
            f"--output: refusing to overwrite input file(s): {', '.join(clash)}; "
            "choose another output folder"
        )
    foreign = [d for d in outs if os.path.exists(d) and not _written_by_demo(d)]
    if foreign and not overwrite:
        raise ValueError(
            f"--output: refusing to overwrite {len(foreign)} existing file(s) the demo did not "
            f"write: {', '.join(foreign[:5])}; choose another output, or pass --overwrite"
        )
    os.makedirs(output if as_folder else os.path.dirname(os.path.abspath(output)), exist_ok=True)
    return outs


def has_display() -> bool:
    """Whether OpenCV can open a window (on Linux it needs an X or Wayland display; Qt aborts the
    process without one)."""
    if not sys.platform.startswith("linux"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def run_images(demo, inputs, outs):
    """Draw each input; ``outs``: output paths from :func:`output_paths` (None entries: show).
    An unreadable input is skipped with a warning; when none could be read, an error names them."""
    skipped = []
    for i, (path, out) in enumerate(zip(inputs, outs)):
        count = f"[{i + 1}/{len(inputs)}] " if len(inputs) > 1 else ""  # a log line per image
        try:
            image = read_image(path, format="BGR")  # the project's reader: 16-bit images scaled
        except Exception as e:  # unreadable / corrupt file: skip it, as a batch tool should
            logger.warning(f"{count}{path}: cannot read image ({type(e).__name__}: {e}); skipped")
            skipped.append(path)
            continue
        start = time.time()
        instances, vis = demo.run_on_image(image)
        found = f"{len(instances)} detection{'' if len(instances) == 1 else 's'}"
        logger.info(f"{count}{path}: {found} in {time.time() - start:.2f}s")
        if out:
            vis.save(out)
            record_outputs([out])
        else:
            cv2.namedWindow(WINDOW_NAME, cv2.WINDOW_NORMAL)
            cv2.imshow(WINDOW_NAME, vis.get_image()[:, :, ::-1])
            if cv2.waitKey(0) == 27:
                break  # esc to quit
    if skipped and len(skipped) == len(inputs):
        raise OSError(
            f"--input: none of the {len(inputs)} input(s) could be read as an image "
            f"({', '.join(skipped[:5])}{', ...' if len(skipped) > 5 else ''}); nothing was drawn"
        )


def video_output(video_path, output, overwrite=False):
    """The .mp4 the video's result goes to (a folder gets <video name>.mp4), checked like images."""
    if not output.lower().endswith(".mp4"):
        stem = os.path.splitext(os.path.basename(video_path))[0]
        output = os.path.join(output, stem + ".mp4")
    return output_paths([video_path], output, overwrite)[0]


def run_video(demo, video_path, out):
    video = cv2.VideoCapture(video_path)
    if not video.isOpened():
        raise OSError(f"--video-input: cannot open video {video_path}")
    width = int(video.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(video.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fps, num_frames = video.get(cv2.CAP_PROP_FPS) or 25.0, int(video.get(cv2.CAP_PROP_FRAME_COUNT))
    writer = None
    if out:
        writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height), True)
        if not writer.isOpened():
            raise OSError(f"--output: cannot write video {out}")
    for frame in tqdm.tqdm(demo.run_on_video(video), total=num_frames or None, desc="frames"):
        if writer is not None:
            writer.write(frame)
        else:
            cv2.namedWindow(WINDOW_NAME, cv2.WINDOW_NORMAL)
            cv2.imshow(WINDOW_NAME, frame)
            if cv2.waitKey(1) == 27:
                break
    video.release()
    if writer is not None:
        writer.release()
        record_outputs([out])
        logger.info(f"Video written to {out}")


def run_webcam(demo):
    cam = cv2.VideoCapture(0)
    if not cam.isOpened():
        raise OSError("--webcam: cannot open camera 0")
    for frame in tqdm.tqdm(demo.run_on_video(cam), desc="webcam frames"):
        cv2.namedWindow(WINDOW_NAME, cv2.WINDOW_NORMAL)
        cv2.imshow(WINDOW_NAME, frame)
        if cv2.waitKey(1) == 27:
            break  # esc to quit
    cam.release()
    cv2.destroyAllWindows()


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger(name="gridclip_d2")
    setup_logger()
    logger.info("Arguments: " + str(args))
    sources = sum(bool(x) for x in (args.input, args.video_input, args.webcam))
    if sources != 1:
        raise SystemExit("give exactly one of --input, --video-input or --webcam")
    if not args.output and not has_display():
        raise SystemExit(
            "No display to show the results on (DISPLAY is not set): pass --output FOLDER "
            "to write the drawn images there (e.g. --output out/), or run where a screen is"
        )
    # Inputs and outputs are checked before the model is built.
    inputs = collect_inputs(args.input) if args.input else None
    if args.video_input and not os.path.isfile(args.video_input):
        raise FileNotFoundError(f"--video-input: not found: {args.video_input}")
    if inputs is not None:
        outs = (
            output_paths(inputs, args.output, args.overwrite)
            if args.output
            else [None] * len(inputs)
        )
    elif args.video_input:
        outs = video_output(args.video_input, args.output, args.overwrite) if args.output else None
    exemplars = query_images_from_args(args)
    cfg = setup_cfg(args)
    vocabulary = None
    if exemplars:  # the named classes (if any were chosen) then the examples'
        named = list(cfg.MODEL.GRIDCLIP.CLASS_NAMES) if vocabulary_from_args(args) else []
        vocabulary = named + exemplars
    demo = VisualizationDemo(cfg, vocabulary, confidence_threshold=args.confidence_threshold)
    logger.info(
        f"Vocabulary: {len(demo.class_names)} classes ({', '.join(demo.class_names[:8])}"
        f"{', ...' if len(demo.class_names) > 8 else ''})"
    )
    if inputs is not None:
        run_images(demo, inputs, outs)
    elif args.video_input:
        run_video(demo, args.video_input, outs)
    else:
        run_webcam(demo)


if __name__ == "__main__":
    main()
