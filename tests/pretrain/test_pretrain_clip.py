"""The small CLIP's pretraining: OpenAI-format output that both ``clip.model.build_model`` and
``MODEL.CLIP.WEIGHTS`` load to the same embeddings, deterministic resume, caption data, the tool."""

import os
import sys

import clip
import pytest
import torch
from clip.model import build_model

from gridclip_d2.data.synthetic_captions import (
    _is_object_photo,
    _pair,
    caption_for,
    ensure_caption_dataset,
    load_caption_dataset,
)
from gridclip_d2.data.synthetic_shapes import CATEGORY_NAMES
from gridclip_d2.modeling.clip_resnet import CLIPResNet, normalize_clip_input
from gridclip_d2.modeling.clip_text import CLIPTextEncoder
from gridclip_d2.modeling.clip_weights import clip_state_dict_from_cfg
from gridclip_d2.pretrain.contrastive import PretrainConfig, pretrain_clip

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = dict(steps=4, batch_size=8, warmup=1, num_pairs=64, checkpoint_period=2)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    path = pretrain_clip(
        str(root / "a"),
        PretrainConfig(**TINY),
        datasets_root=str(root / "data"),
        evaluate=False,
        progress=False,
    )
    return root, path


def test_caption_pairs_name_what_is_drawn(tiny_run):
    root, _ = tiny_run
    images, captions, named = load_caption_dataset(str(root / "data"), 64)
    assert images.shape == (64, 3, 96, 96) and images.dtype == torch.uint8
    assert len(captions) == len(named) == 64
    for caption, cats in zip(captions, named):
        assert cats, caption
        for k in cats:  # every named category is in the caption's words, plurals included
            colour, shape = CATEGORY_NAMES[k].split()
            assert colour in caption and shape in caption, (caption, CATEGORY_NAMES[k])
    # base and novel categories alike, several templates, counts
    assert len({c.split(" ")[0] for c in captions}) > 3
    rng = __import__("numpy").random.RandomState(0)
    assert caption_for([0, 0, 5], rng).count("two red circles") == 1


def test_caption_pairs_are_deterministic_and_frame_objects_as_the_crops(tiny_run, tmp_path):
    """A second generation writes the same bytes; most pairs are object photos: one object named,
    framed as the zero-shot and alignment crops frame it (its box about half the crop's side)."""
    root, _ = tiny_run
    again = ensure_caption_dataset(str(tmp_path), 64)
    first = os.path.join(str(root / "data"), "synthetic_captions_64")
    files = sorted(os.listdir(os.path.join(first, "images")))
    assert files == sorted(os.listdir(os.path.join(again, "images")))
    for name in ["captions.json"] + [os.path.join("images", f) for f in files]:
        with open(os.path.join(first, name), "rb") as a, open(os.path.join(again, name), "rb") as b:
            assert a.read() == b.read(), name
    photos = 0
    for i in range(64):
        pixels, caption, named = _pair(i)
        if _is_object_photo(i):
            photos += 1
            assert len(named) == 1 and CATEGORY_NAMES[named[0]] in caption
    assert 0.5 < photos / 64 < 0.8


def test_checkpoint_loads_in_clip_and_in_the_detector_with_equal_embeddings(tiny_run, gridclip_cfg):
    _, path = tiny_run
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    assert "visual.attnpool.c_proj.weight" in state_dict and "logit_scale" in state_dict
    assert state_dict["visual.conv1.weight"].dtype == torch.float16  # OpenAI's dtypes
    reference = build_model(state_dict).float().eval()

    cfg = gridclip_cfg(ARCH="RNtiny96", WEIGHTS=path, NORM="FrozenBN")
    sd = clip_state_dict_from_cfg(cfg)
    image_encoder = CLIPResNet("RNtiny96", out_features=("res5",), state_dict=sd).eval()
    text_encoder = CLIPTextEncoder.from_state_dict(sd)

    torch.manual_seed(0)
    pixels = torch.randint(0, 256, (3, 3, 96, 96), dtype=torch.uint8)
    x = normalize_clip_input(pixels)
    tokens = clip.tokenize(
        ["a red circle", "two blue crosses and a green square."], context_length=32
    )
    with torch.no_grad():
        assert torch.allclose(image_encoder.encode_image(x), reference.encode_image(x), atol=1e-4)
        assert torch.allclose(
            text_encoder.encode_text(tokens), reference.encode_text(tokens), atol=1e-4
        )


def test_resume_gives_the_weights_of_an_uninterrupted_run(tiny_run):
    root, straight = tiny_run
    data = str(root / "data")
    out = str(root / "b")
    pretrain_clip(
        out,
        PretrainConfig(**dict(TINY, steps=2)),
        datasets_root=data,
        evaluate=False,
        progress=False,
    )
    # a run stopped after step 2 left last_checkpoint.pth of a 4-step schedule: make that state
    # by running the 4-step config and deleting the final file after its step-2 checkpoint
    out = str(root / "c")
    pretrain_clip(out, PretrainConfig(**TINY), datasets_root=data, evaluate=False, progress=False)
    state = torch.load(
        os.path.join(out, "last_checkpoint.pth"), map_location="cpu", weights_only=True
    )
    assert state["step"] == 2
    os.remove(os.path.join(out, "RNtiny96_synthetic.pt"))
    resumed = pretrain_clip(
        out, PretrainConfig(**TINY), resume=True, datasets_root=data, evaluate=False, progress=False
    )
    a = torch.load(straight, map_location="cpu", weights_only=True)
    b = torch.load(resumed, map_location="cpu", weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="written with settings"):
        pretrain_clip(
            out,
            PretrainConfig(**dict(TINY, lr=0.5)),
            resume=True,
            datasets_root=data,
            evaluate=False,
            progress=False,
        )


def test_tool_reports_zero_shot_accuracy(tiny_run, capsys):
    root, path = tiny_run
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import pretrain_clip as tool

    assert tool.main(["--eval-only", path]) == 0
    out = capsys.readouterr().out
    assert "Zero-shot accuracy" in out and "| base | novel-compositional | novel-concept |" in out
    assert "| test | one prompt" in out and "| val | prompt ensemble |" in out
    with pytest.raises(SystemExit):
        tool.main(["--eval-only", str(root / "missing.pt")])


def test_tool_never_pretrains_over_finished_weights_without_asking(tiny_run, capsys):
    root, path = tiny_run
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import pretrain_clip as tool

    before = open(path, "rb").read()
    with pytest.raises(SystemExit) as e:
        tool.main(["--output", os.path.dirname(path), "--arch", "RNtiny96"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"{path} exists (a finished pretraining)" in err
    assert "--overwrite" in err and "--resume" in err
    assert open(path, "rb").read() == before
