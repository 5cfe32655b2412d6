"""Zero-shot classification of single-object crops: does a CLIP know the synthetic categories?

For every box of a synthetic split, a square crop centred on the box (side twice its longer side,
shifted to stay inside the image: ``framed_crop``) is resized to the CLIP's resolution and
classified among all 30 category names by cosine similarity with their text embeddings, with one
prompt ("a {}", the detector's ``MODEL.GRIDCLIP.PROMPT``) and with the prompt ensemble. Accuracy
is reported per class group (base, novel-compositional, novel-concept:
``SYNTHETIC_CLASS_GROUPS``) on ``val`` (where pretraining settings are chosen) and ``test`` (the
reported numbers). Images go through the detector's own ``CLIPResNet.encode_image`` and names
through ``encode_names``: the same code that builds the detector's backbone, teacher and
classifier from ``MODEL.CLIP.WEIGHTS``.
"""

import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..clip_arch import get_arch
from ..data.synthetic import SYNTHETIC_CLASS_GROUPS, ensure_synthetic_dataset
from ..data.synthetic_shapes import CATEGORY_NAMES, framed_crop
from ..modeling.clip_resnet import CLIPResNet, normalize_clip_input
from ..modeling.clip_text import PROMPT_ENSEMBLE, CLIPTextEncoder, encode_names
from ..modeling.clip_weights import load_clip_state_dict

__all__ = ["box_crops", "zero_shot_accuracy", "zero_shot_report", "format_report"]


REPORT_SPLITS = ("val", "test")
_GROUPS = tuple(SYNTHETIC_CLASS_GROUPS)  # base, novel-compositional, novel-concept


def box_crops(datasets_root: Optional[str], size: int, split: str = "val"):
    """(crops M x 3 x size x size uint8, labels M) of every box of synthetic_<split>."""
    root = ensure_synthetic_dataset(datasets_root)
    with open(os.path.join(root, "annotations", f"synthetic_{split}.json")) as f:
        data = json.load(f)
    images = {img["id"]: img for img in data["images"]}
    by_image: Dict[int, List[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    crops, labels = [], []
    for image_id, anns in sorted(by_image.items()):
        img = images[image_id]
        pixels = np.asarray(Image.open(os.path.join(root, img["file_name"])).convert("RGB"))
        for ann in anns:
            crops.append(framed_crop(pixels, ann["bbox"], size))
            labels.append(ann["category_id"] - 1)
    crops = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
    return crops, torch.tensor(labels)


@torch.no_grad()
def zero_shot_accuracy(
    image_encoder: CLIPResNet,
    text_encoder: CLIPTextEncoder,
    crops: torch.Tensor,
    labels: torch.Tensor,
    names: Sequence[str],
    templates: Sequence[str],
    classes: Optional[Sequence[int]] = None,
) -> float:
    """Top-1 accuracy (%) over the crops whose label is in ``classes`` (all when None)."""
    text = encode_names(text_encoder, names, templates)  # C x D
    emb = torch.cat(
        [
            F.normalize(
                image_encoder.encode_image(normalize_clip_input(crops[i : i + 256])), dim=-1
            )
            for i in range(0, len(crops), 256)
        ]
    )
    pred = (emb @ text.t()).argmax(dim=1)
    keep = torch.ones_like(labels, dtype=torch.bool)
    if classes is not None:
        keep = torch.isin(labels, torch.as_tensor(list(classes)))
    if not keep.any():
        return float("nan")
    return 100.0 * (pred[keep] == labels[keep]).float().mean().item()


def zero_shot_report(weights: str, arch: str, datasets_root: Optional[str] = None) -> dict:
    """Accuracy per class group and in all, on the val and test crops, with one prompt and with
    the ensemble: ``report[split][prompts][group]``."""
    state_dict = load_clip_state_dict(weights, arch)
    image_encoder = CLIPResNet(
        arch, out_features=("res5",), norm="FrozenBN", state_dict=state_dict
    ).eval()
    text_encoder = CLIPTextEncoder.from_state_dict(state_dict)
    report = {"weights": weights, "arch": arch}
    for split in REPORT_SPLITS:
        crops, labels = box_crops(datasets_root, get_arch(arch).image_resolution, split)
        entry = {
            "num_crops": {
                g: int(torch.isin(labels, torch.tensor(ids)).sum())
                for g, ids in SYNTHETIC_CLASS_GROUPS.items()
            }
        }
        for key, templates in (("one_prompt", ["a {}"]), ("ensemble", PROMPT_ENSEMBLE)):
            entry[key] = {
                group: zero_shot_accuracy(
                    image_encoder, text_encoder, crops, labels, CATEGORY_NAMES, templates, classes
                )
                for group, classes in list(SYNTHETIC_CLASS_GROUPS.items()) + [("all", None)]
            }
        report[split] = entry
    return report


def format_report(report: dict) -> str:
    """The zero-shot table of :func:`zero_shot_report`'s output, in markdown."""
    rows = [
        "| split | prompts | " + " | ".join(_GROUPS) + " | all |",
        "|---|---|" + "---|" * (len(_GROUPS) + 1),
    ]
    for split in REPORT_SPLITS:
        for key, label in (("one_prompt", 'one prompt ("a {}")'), ("ensemble", "prompt ensemble")):
            r = report[split][key]
            cells = " | ".join(f"{r[g]:.1f}" for g in _GROUPS + ("all",))
            rows.append(f"| {split} | {label} | {cells} |")
    counts = ", ".join(
        f"{split}: " + " + ".join(str(report[split]["num_crops"][g]) for g in _GROUPS)
        for split in REPORT_SPLITS
    )
    head = (
        f"Zero-shot accuracy (%) of {report['weights']} on the single-object crops of the "
        f"synthetic splits ({counts} crops of {' + '.join(_GROUPS)}):"
    )
    return "\n".join([head] + rows)
