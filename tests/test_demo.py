"""demo/demo.py and demo/predictor.py: images, folders and video through a saved GridCLIP model,
with a custom vocabulary swapped in at inference."""

import hashlib
import importlib.util
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from gridclip_d2 import add_gridclip_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "GridCLIP_synthetic.yaml")
SMALL = [
    "INPUT.MIN_SIZE_TEST",
    "128",
    "INPUT.MAX_SIZE_TEST",
    "128",
    "TEST.DETECTIONS_PER_IMAGE",
    "5",
]


def _load_demo():
    spec = importlib.util.spec_from_file_location(
        "gridclip_demo", os.path.join(REPO, "demo", "demo.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _load_demo()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A GridCLIP checkpoint as training writes it (random weights; fixed seed)."""
    cfg = get_cfg()
    add_gridclip_config(cfg)
    cfg.merge_from_file(CONFIG)
    model = build_model(cfg)
    root = tmp_path_factory.mktemp("demo_weights")
    DetectionCheckpointer(model, save_dir=str(root)).save("model")
    return str(root / "model.pth")


@pytest.fixture
def images(tmp_path):
    rng = np.random.RandomState(0)
    folder = tmp_path / "inputs"
    folder.mkdir()
    paths = []
    for i, (h, w) in enumerate([(120, 160), (150, 100)]):
        img = (rng.rand(h, w, 3) * 80 + 100).astype(np.uint8)
        img[20:70, 30:80] = (230, 30, 30)
        paths.append(str(folder / f"photo{i}.png"))
        Image.fromarray(img).save(paths[-1])
    (folder / "notes.txt").write_text("not an image")
    return paths


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def test_custom_vocabulary_images_written(weights, images, tmp_path):
    before = [_digest(p) for p in images]
    out = tmp_path / "out"
    demo.main(
        [
            "--config-file",
            CONFIG,
            "--input",
            os.path.dirname(images[0]),
            "--output",
            str(out),
            "--vocabulary",
            "custom",
            "--custom-vocabulary",
            "zebra,traffic cone",
            "--confidence-threshold",
            "0",
            "--opts",
            "MODEL.WEIGHTS",
            weights,
            *SMALL,
        ]
    )
    # the drawn images, and the list of what the demo wrote (which a later run may overwrite)
    assert sorted(os.listdir(out)) == [".gridclip_demo_outputs.json", "photo0.png", "photo1.png"]
    for src in images:
        drawn = np.asarray(Image.open(out / os.path.basename(src)).convert("RGB"))
        original = np.asarray(Image.open(src).convert("RGB"))
        assert drawn.shape == original.shape
        assert np.abs(drawn.astype(int) - original).mean() > 0.5  # boxes and labels drawn
    assert [_digest(p) for p in images] == before  # inputs untouched


def test_predictor_swaps_vocabulary(weights, images):
    cfg = demo.setup_cfg(
        demo.get_parser().parse_args(
            [
                "--config-file",
                CONFIG,
                "--confidence-threshold",
                "0",
                "--opts",
                "MODEL.WEIGHTS",
                weights,
                *SMALL,
            ]
        )
    )
    vis_demo = demo.VisualizationDemo(
        cfg, ["zebra", "traffic cone", "kite"], confidence_threshold=0
    )
    assert vis_demo.class_names == ["zebra", "traffic cone", "kite"]
    assert vis_demo.predictor.model.head.classifier.num_classes == 3
    image = cv2.imread(images[0])
    instances, vis = vis_demo.run_on_image(image)
    classes = instances.pred_classes
    assert 1 <= len(classes) <= 5 and int(classes.max()) < 3
    assert list(instances.pred_class_names) == [vis_demo.class_names[int(c)] for c in classes]
    assert vis.get_image().shape == image.shape
    # Without a vocabulary, the model's own (here the training set's classes) name the boxes.
    assert demo.VisualizationDemo(cfg).class_names[0] == "red circle"
    with pytest.raises(ValueError, match="empty"):
        demo.VisualizationDemo(cfg, [])


def test_video(weights, tmp_path):
    video = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 5, (96, 64), True)
    for i in range(3):
        writer.write(np.full((64, 96, 3), 60 * i, np.uint8))
    writer.release()
    out = tmp_path / "video_out"
    out.mkdir()
    demo.main(
        [
            "--config-file",
            CONFIG,
            "--video-input",
            video,
            "--output",
            str(out),
            "--vocabulary",
            "synthetic",
            "--confidence-threshold",
            "0",
            "--opts",
            "MODEL.WEIGHTS",
            weights,
            *SMALL,
        ]
    )
    result = cv2.VideoCapture(str(out / "clip.mp4"))
    assert int(result.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    assert int(result.get(cv2.CAP_PROP_FRAME_WIDTH)) == 96


def test_inputs_and_outputs_checked(images, tmp_path):
    folder = os.path.dirname(images[0])
    assert demo.collect_inputs([folder]) == images  # images only, sorted
    assert demo.collect_inputs([os.path.join(folder, "*.png"), images[0]]) == images
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        demo.collect_inputs([images[0], str(tmp_path / "missing.jpg")])
    with pytest.raises(ValueError, match="refusing to overwrite input"):
        demo.output_paths(images, folder)
    with pytest.raises(ValueError, match="refusing to overwrite input"):
        demo.output_paths(images[:1], images[0])
    assert demo.output_paths(images[:1], str(tmp_path / "drawn.jpg")) == [
        str(tmp_path / "drawn.jpg")
    ]
    assert demo.output_paths(images, str(tmp_path / "o")) == [
        str(tmp_path / "o" / "photo0.png"),
        str(tmp_path / "o" / "photo1.png"),
    ]
    other = tmp_path / "other"
    other.mkdir()
    (other / "photo0.png").write_bytes(b"")
    with pytest.raises(ValueError, match="would both be written"):
        demo.output_paths([images[0], str(other / "photo0.png")], str(tmp_path / "o"))


def test_vocabulary_arguments(tmp_path):
    """The demo's own options around the vocabulary; how --custom-vocabulary is parsed is the rule
    of every entry point (tests/test_vocabulary_entry_points.py)."""
    parse = demo.get_parser().parse_args
    base = ["--config-file", CONFIG, "--input", "x.jpg"]

    def names(argv):
        vocabulary = demo.vocabulary_from_args(parse(base + argv))
        return None if vocabulary is None else list(vocabulary.names)

    assert names([]) is None
    assert names(["--custom-vocabulary", "zebra, kite"]) == ["zebra", "kite"]
    assert len(names(["--vocabulary", "lvis"])) == 1203
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("zebra\n# comment\ntraffic cone, pylon\n")
    assert names(["--vocabulary", "custom", "--custom-vocabulary", str(vocab_file)]) == [
        "zebra",
        "traffic cone",
    ]
    # a names file that is not there is an error naming it, not a class named after it
    with pytest.raises(FileNotFoundError, match="--custom-vocabulary: .*names.txt not found"):
        names(["--custom-vocabulary", str(tmp_path / "names.txt")])
    with pytest.raises(ValueError, match="--custom-vocabulary"):
        names(["--vocabulary", "custom"])
    with pytest.raises(ValueError, match="only used with --vocabulary custom"):
        names(["--vocabulary", "lvis", "--custom-vocabulary", "a"])


def test_a_class_keeps_its_colour():
    """Boxes are coloured by class name, not at random: the same detections draw the same pixels,
    whatever the class ids of the vocabulary they came from."""
    from detectron2.structures import Boxes, Instances

    draw_instances = sys.modules["predictor"].draw_instances  # demo/predictor.py, loaded by demo

    def drawn(names, classes):
        inst = Instances(
            (64, 96),
            pred_boxes=Boxes(torch.tensor([[5.0, 5.0, 40.0, 40.0], [50.0, 10.0, 90.0, 60.0]])),
            scores=torch.tensor([0.9, 0.6]),
            pred_classes=torch.tensor(classes),
        )
        return draw_instances(np.full((64, 96, 3), 128, np.uint8), inst, names).get_image()

    first = drawn(["cat", "dog"], [1, 0])
    assert np.array_equal(first, drawn(["cat", "dog"], [1, 0]))
    assert np.array_equal(first, drawn(["dog", "zebra", "cat"], [0, 2]))


def test_labels_stay_inside_the_image():
    """A box at the right edge, one beside it, one at the bottom, one at the top left: every label
    is drawn whole inside the image (the Visualizer alone puts the first past the right edge), and
    the label moved inside covers no other label."""
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.visualizer import Visualizer

    module = sys.modules["predictor"]  # demo/predictor.py, loaded by demo
    rgb = np.full((120, 240, 3), 128, np.uint8)
    boxes = [
        [200.0, 60.0, 238.0, 100.0],
        [150.0, 60.0, 190.0, 100.0],
        [20.0, 100.0, 60.0, 119.0],
        [0.0, 0.0, 30.0, 30.0],
    ]
    names = ["class at the edge", "beside", "bottom", "top left"]
    inst = Instances(
        rgb.shape[:2],
        pred_boxes=Boxes(torch.tensor(boxes)),
        scores=torch.tensor([0.9, 0.85, 0.8, 0.7]),
        pred_classes=torch.tensor([0, 1, 2, 3]),
    )

    def extents(vis):
        renderer = vis.canvas.get_renderer()
        return [t.get_window_extent(renderer) for t in vis.ax.texts]

    def outside(vis):
        fig = vis.fig.bbox
        found = extents(vis)
        assert len(found) == 4
        return [
            b for b in found if b.x0 < fig.x0 - 0.5 or b.x1 > fig.x1 + 0.5 or b.y0 < fig.y0 - 0.5
        ]

    plain = Visualizer(rgb, module.vocabulary_metadata(names)).overlay_instances(
        boxes=inst.pred_boxes, labels=[f"{n} 90%" for n in names]
    )
    assert outside(plain)  # what the fix is for
    drawn = module.draw_instances(rgb, inst, names)
    assert not outside(drawn)
    labels = extents(drawn)
    assert not any(a.overlaps(b) for i, a in enumerate(labels) for b in labels[i + 1 :])
    # wider than the image: its start is shown
    wide = module.draw_instances(rgb, inst, ["a class name far wider than this small image"] * 4)
    assert all(b.x0 >= -0.5 for b in extents(wide))


def test_bf16_flag_sets_the_config_key():
    """--bf16 is MODEL.GRIDCLIP.CPU_BF16 (whether it runs is the model's check:
    tests/modeling/test_cpu_bf16.py)."""
    base = ["--config-file", CONFIG, "--input", "x.jpg"]
    assert demo.setup_cfg(demo.get_parser().parse_args(base + ["--bf16"])).MODEL.GRIDCLIP.CPU_BF16
    assert not demo.setup_cfg(demo.get_parser().parse_args(base)).MODEL.GRIDCLIP.CPU_BF16


@pytest.mark.slow
def test_lvis_config_with_a_custom_vocabulary_needs_no_lvis_file(
    tmp_path, monkeypatch, random_clip
):
    """The LVIS config, OpenAI-format RN50 weights and a GridCLIP checkpoint: a custom vocabulary
    needs neither the LVIS text embeddings nor LVIS's names, and no teacher is built."""
    from gridclip_d2.modeling import clip_text

    lvis_config = os.path.join(REPO, "configs", "GridCLIP_LVIS.yaml")
    assert not os.path.exists(
        os.path.join(REPO, "datasets", "metadata", "lvis_v1_clip_RN50_ensemble.npy")
    )
    rn50 = str(tmp_path / "RN50.pt")
    torch.save(random_clip("RN50").state_dict(), rn50)
    embedded = []
    encode = clip_text.encode_names
    monkeypatch.setattr(
        clip_text,
        "encode_names",
        lambda enc, names, *a, **k: embedded.append(len(names)) or encode(enc, names, *a, **k),
    )
    opts = ["MODEL.CLIP.WEIGHTS", rn50, "INPUT.MIN_SIZE_TEST", "320", "INPUT.MAX_SIZE_TEST", "480"]
    argv = [
        "--config-file",
        lvis_config,
        "--input",
        "x.jpg",
        "--vocabulary",
        "custom",
        "--custom-vocabulary",
        "person,necktie,flag",
        "--opts",
        *opts,
    ]
    cfg = demo.setup_cfg(demo.get_parser().parse_args(argv))
    model = build_model(cfg)
    assert model.image_alignment is None and model.vocabulary == ["person", "necktie", "flag"]
    assert embedded == [3]  # three names embedded, not LVIS's 1203
    weights = str(tmp_path / "model.pth")
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")

    photo = str(tmp_path / "photo.jpg")
    Image.fromarray((np.random.RandomState(1).rand(120, 160, 3) * 255).astype(np.uint8)).save(photo)
    out = tmp_path / "out"
    demo.main(
        [
            "--config-file",
            lvis_config,
            "--input",
            photo,
            "--output",
            str(out),
            "--vocabulary",
            "custom",
            "--custom-vocabulary",
            "person,necktie,flag",
            "--confidence-threshold",
            "0",
            "--opts",
            *opts,
            "MODEL.WEIGHTS",
            weights,
        ]
    )
    drawn = np.asarray(Image.open(out / "photo.jpg").convert("RGB"))
    assert drawn.shape == (120, 160, 3)
    assert embedded == [3, 3]


def test_outputs_checked_before_the_model_and_foreign_files_kept(images, tmp_path):
    existing = tmp_path / "holiday.jpg"  # not an input, not written by the demo
    existing.write_bytes(b"precious")
    with pytest.raises(
        ValueError, match=r"refusing to overwrite 1 existing file\(s\) the demo did not write"
    ):
        demo.output_paths(images[:1], str(existing))
    assert existing.read_bytes() == b"precious"
    assert demo.output_paths(images[:1], str(existing), overwrite=True) == [str(existing)]
    text = tmp_path / "notes.txt"
    text.write_text("x")
    with pytest.raises(
        ValueError, match="notes.txt is an existing file, but 2 inputs need a folder"
    ):
        demo.output_paths(images, str(text))
    # Files the demo wrote itself may be written again.
    out = tmp_path / "drawn"
    outs = demo.output_paths(images, str(out))
    for o in outs:
        open(o, "wb").close()
    demo.record_outputs(outs)
    assert demo.output_paths(images, str(out)) == outs
    # main() checks before any config or model is read: a bad config file is never reached.
    with pytest.raises(ValueError, match="refusing to overwrite"):
        demo.main(
            [
                "--config-file",
                "no/such/config.yaml",
                "--input",
                images[0],
                "--output",
                str(existing),
            ]
        )


def test_no_display_asks_for_an_output_before_loading_anything(monkeypatch, images):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(demo.sys, "platform", "linux")
    monkeypatch.setattr(demo, "setup_cfg", lambda args: pytest.fail("the model must not be set up"))
    with pytest.raises(SystemExit, match="No display .* pass --output FOLDER"):
        demo.main(["--config-file", CONFIG, "--input", images[0]])


def _web_page(weights):
    """demo/app.py loaded as a module, a predictor of ``weights`` and the page's callbacks."""
    from gridclip_d2 import GridCLIPPredictor

    spec = importlib.util.spec_from_file_location(
        "gridclip_app", os.path.join(REPO, "demo", "app.py")
    )
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    predictor = GridCLIPPredictor.from_config_file(CONFIG, weights=weights, opts=SMALL)
    return app, predictor, app.DetectionPage(predictor)


def test_web_page_callback_takes_names_only(weights, images, tmp_path):
    """demo/app.py's callback without a browser: the text box holds class names only (text naming a
    file is refused, and no server file is read), bad input is answered with a message, and no
    vocabulary is registered globally."""
    from detectron2.data import MetadataCatalog

    app, predictor, page = _web_page(weights)
    rgb = np.asarray(Image.open(images[0]).convert("RGB"))
    secret = tmp_path / "classes.txt"
    secret.write_text("secret class\n")
    registered = len(MetadataCatalog.list())

    for text in [f"{secret}, kite", "zebra.npy, cone.json,kite"]:
        drawn, rows, message = page.detect(rgb, text, 0.0)
        names = [n.strip() for n in text.split(",")]
        assert "detection(s) at score >= 0.00" in message, message
        assert predictor.vocabulary == names and drawn.shape == rgb.shape
        assert rows and {row[0] for row in rows} <= set(names)
    assert app.vocabulary_from_text(" zebra ,, kite ") == ["zebra", "kite"]
    assert len(MetadataCatalog.list()) == registered
    for text in [str(secret), "zebra.npy, cone.json,missing.txt"]:  # a file: refused, never read
        drawn, rows, message = page.detect(rgb, text, 0.0)
        assert drawn is None and rows == [] and "secret class" not in predictor.vocabulary
        assert message.startswith("Vocabulary: ") and "names a file" in message, message

    _, _, message = page.detect(rgb, " , ", 0.5)
    assert message.startswith("Vocabulary: empty vocabulary")
    _, _, message = page.detect(rgb, "kite, zebra, kite", 0.5)
    assert message.startswith("Vocabulary:") and "more than once" in message
    _, _, message = page.detect(rgb.astype(np.float32), "kite", 0.5)
    assert message.startswith("Cannot use this image: image: expected a uint8 array")
    _, _, message = page.detect(np.zeros((4, 4, 2), np.uint8), "kite", 0.5)
    assert message.startswith("Cannot use this image:")
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    for image in (rgba, rgb[:, :, 0]):  # alpha dropped, grey made three channels
        drawn, _, message = page.detect(image, "kite", 0.0)
        assert drawn.shape == rgb.shape and "detection(s)" in message


def test_a_user_reads_one_line_per_image_and_no_warning(weights, images, tmp_path):
    """As a user runs it, in a subprocess with Python's warnings of the kinds shown by default made
    errors: the libraries' known warnings are filtered (gridclip_d2/library_warnings.py), and ours
    would fail the run. A line per image, with its count in words a person writes."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-W", "error::FutureWarning", "-W", "error::UserWarning"]
    cmd += [os.path.join(REPO, "demo", "demo.py"), "--config-file", CONFIG, "--output", str(out)]
    cmd += ["--input", *images, "--confidence-threshold", "0", "--opts", "MODEL.WEIGHTS", weights]
    run = subprocess.run(cmd + SMALL, cwd=REPO, capture_output=True, text=True, timeout=300)
    text = run.stdout + run.stderr
    assert run.returncode == 0, text[-3000:]
    assert "Warning" not in text and "warnings.warn" not in text, text
    lines = re.findall(r"\[(\d)/2\] \S+photo\d\.png: (\d+) (detections?) in \d+\.\d\ds", text)
    assert [line[0] for line in lines] == ["1", "2"], text
    assert all((n == "1") == (word == "detection") for _, n, word in lines)
    assert "it/s]" not in text  # no progress bar between the log lines


def test_query_images_join_the_named_classes(weights, images, tmp_path, monkeypatch):
    built, original = [], demo.VisualizationDemo
    monkeypatch.setattr(
        demo, "VisualizationDemo", lambda *a, **k: built.append(original(*a, **k)) or built[-1]
    )
    argv = ["--config-file", CONFIG, "--input", images[1], "--confidence-threshold", "0"]
    argv += ["--output", str(tmp_path / "out")]
    red = f"red block={images[0]}:30,20,80,70"  # the red square drawn in the first image
    query = ["--query-image", red, "--query-image", f"red block={images[0]}"]
    opts = ["--opts", "MODEL.WEIGHTS", weights, *SMALL]
    demo.main(argv + ["--custom-vocabulary", "zebra, kite"] + query + opts)
    predictor = built[-1].predictor
    assert predictor.vocabulary == ["zebra", "kite", "red block"]
    _, (row,) = predictor.exemplar_embeddings(
        [demo.parse_query_image(red), demo.parse_query_image(f"red block={images[0]}")]
    )
    torch.testing.assert_close(predictor.model.head.classifier.embeddings[2].cpu(), row)
    assert (tmp_path / "out" / "photo1.png").is_file()
    # alone, the examples are the vocabulary
    demo.main(argv + ["--overwrite"] + query[:2] + opts)
    assert built[-1].predictor.vocabulary == ["red block"]
    # checked before the model is built: the syntax, the file; then the pixels, named
    with pytest.raises(ValueError, match="expected NAME=PATH"):
        demo.main(argv + ["--query-image", images[0]] + opts)
    with pytest.raises(FileNotFoundError, match="--query-image 'cup=nowhere.png'"):
        demo.main(argv + ["--query-image", "cup=nowhere.png"] + opts)
    with pytest.raises(ValueError, match=r"image exemplar cup=.*photo0.png:0,0,500,20.*not inside"):
        demo.main(argv + ["--overwrite", "--query-image", f"cup={images[0]}:0,0,500,20"] + opts)


def test_web_page_classes_by_example(weights, images):
    """demo/app.py's "Classes by example" without a browser: an example is embedded when added (a
    bad one is refused with the reason), examples of one name are averaged, and detection names
    come from the typed classes and the examples."""

    app, predictor, page = _web_page(weights)
    rgb = np.asarray(Image.open(images[0]).convert("RGB"))
    upload = Image.open(images[0])  # as the page passes an upload: PIL, in its own mode

    examples, rows, message = page.add_example([], upload, "red block", "30, 20, 80, 70")
    assert rows == [["red block", "30, 20, 80, 70", "160 x 120"]] and "Added" in message
    examples, rows, message = page.add_example(examples, rgb, "red block", "")
    assert rows[1] == ["red block", "whole image", "160 x 120"] and "2 of that name" in message
    for image, name, box, reason in [
        (None, "cup", "", "Upload an example image first."),
        (app.UnreadableUpload("OSError"), "cup", "", "not an image that can be read"),
        (upload, " ", "", "non-blank"),
        (upload, "cup", "1, 2, 3", "four finite numbers"),
        (upload, "cup", "0, 0, 500, 20", "not inside the image (160 x 120"),
        (upload, "cup", "5, 5, 5, 9", "empty"),
    ]:
        kept, kept_rows, message = page.add_example(examples, image, name, box)
        assert kept == examples and kept_rows == rows and reason in message, message

    drawn, table, message = page.detect(rgb, "zebra", 0.0, examples)
    assert predictor.vocabulary == ["zebra", "red block"] and drawn.shape == rgb.shape
    assert "among 2 class(es)" in message and {row[0] for row in table} <= {"zebra", "red block"}
    _, (row,) = predictor.exemplar_embeddings(examples)
    torch.testing.assert_close(predictor.model.head.classifier.embeddings[1].cpu(), row)
    _, _, message = page.detect(rgb, "", 0.0, examples)  # the examples alone
    assert predictor.vocabulary == ["red block"] and "among 1 class(es)" in message
    _, _, message = page.detect(rgb, "red block, kite", 0.0, examples)
    assert message.startswith("Vocabulary:") and "both as text and as image" in message
