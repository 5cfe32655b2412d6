#!/usr/bin/env python
"""Write the CLIP text embeddings of a vocabulary: the frozen classifier of GridCLIP.

    python tools/dump_text_embeddings.py --clip RN50 --vocabulary lvis --prompt-ensemble \
        --out datasets/metadata/lvis_v1_clip_RN50_ensemble.npy
    python tools/dump_text_embeddings.py --clip RN50 --vocabulary custom \
        --custom-vocabulary "zebra,traffic cone,kite" --prompt "a photo of a {}." --out my.npy
    python tools/dump_text_embeddings.py --clip "" --arch RNtiny --vocabulary synthetic --out s.npy

Writes FILE.npy (float32, C x D, one L2-normalised row per category in vocabulary order) and
FILE.json beside it, its sidecar (names, prompts, CLIP weights, architecture and text-tower
fingerprint): a model loading FILE.npy (MODEL.GRIDCLIP.TEXT_EMBEDDINGS) checks them against its
vocabulary and MODEL.CLIP.*, and takes its vocabulary from the names when the config gives none.
``--clip`` takes an OpenAI model name, a checkpoint path, or "" for the seeded random CLIP of
``--arch`` (MODEL.CLIP.WEIGHTS rules).
Both files are written to temporary names and renamed, so an interrupted run leaves any previous
output whole.
"""

import gridclip_d2.library_warnings  # noqa: F401  (first: quiets the libraries' warnings)

import argparse
import logging
import os
import sys
from typing import List, Optional

import numpy as np
import torch

from detectron2.utils.logger import setup_logger

from gridclip_d2.atomic_write import atomic_write
from gridclip_d2.clip_arch import CLIP_ARCHS, arch_name, infer_arch
from gridclip_d2.modeling.clip_text import (
    PROMPT_ENSEMBLE,
    CLIPTextEncoder,
    check_prompt,
    encode_names,
)
from gridclip_d2.modeling.clip_weights import load_clip_state_dict, text_fingerprint
from gridclip_d2.vocabulary import (
    VOCABULARY_CHOICES,
    builtin_vocabulary,
    is_vocabulary_file,
    parse_vocabulary,
    write_sidecar,
)

logger = logging.getLogger("gridclip_d2.dump_text_embeddings")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--clip",
        required=True,
        help='OpenAI model name (e.g. RN50), checkpoint path, or "" (random CLIP)',
    )
    p.add_argument(
        "--arch",
        default=None,
        choices=sorted(CLIP_ARCHS),
        help="CLIP architecture (default: the model name, or inferred from the checkpoint)",
    )
    p.add_argument(
        "--download-root", default="", help="folder of OpenAI checkpoints (default ~/.cache/clip)"
    )
    p.add_argument("--seed", type=int, default=0, help='seed of the random CLIP (--clip "")')
    p.add_argument("--vocabulary", required=True, choices=VOCABULARY_CHOICES)
    p.add_argument(
        "--custom-vocabulary",
        default=None,
        help='comma-separated names, e.g. "zebra,kite", or a file (as --vocabulary-file)',
    )
    p.add_argument(
        "--vocabulary-file",
        default=None,
        help=".txt (one category per line, synonyms after commas), .json (list of names) or .npy "
        "(the names of its sidecar)",
    )
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument(
        "--prompt", default="a {}", help='prompt with "{}" for the name (default "a {}")'
    )
    prompt.add_argument(
        "--prompt-ensemble",
        action="store_true",
        help=f"average over {len(PROMPT_ENSEMBLE)} ViLD/CLIP templates",
    )
    p.add_argument(
        "--avg-synonyms", action="store_true", help="average over each category's synonyms"
    )
    p.add_argument("--batch-size", type=int, default=256, help="prompts per forward pass")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", required=True, help="output FILE.npy (FILE.json is written beside it)")
    return p


def vocabulary_from_args(args: argparse.Namespace):
    """The vocabulary of ``--vocabulary`` / ``--custom-vocabulary`` / ``--vocabulary-file``, parsed
    by ``gridclip_d2.vocabulary.parse_vocabulary`` as every entry point parses it."""
    custom = [a for a in (args.custom_vocabulary, args.vocabulary_file) if a is not None]
    if args.vocabulary != "custom":
        if custom:
            raise ValueError("--custom-vocabulary / --vocabulary-file need --vocabulary custom")
        return builtin_vocabulary(args.vocabulary)
    if len(custom) != 1:
        raise ValueError(
            "--vocabulary custom needs one of --custom-vocabulary or --vocabulary-file"
        )
    if args.vocabulary_file is not None:
        if not is_vocabulary_file(args.vocabulary_file):
            raise ValueError(
                f"--vocabulary-file {args.vocabulary_file!r}: expected a .txt, .json or .npy file"
            )
        return parse_vocabulary(args.vocabulary_file, what="--vocabulary-file")
    return parse_vocabulary(args.custom_vocabulary, what="--custom-vocabulary")


def dump_text_embeddings(args: argparse.Namespace) -> np.ndarray:
    """Compute and write the embeddings described by parsed ``args``; returns the C x D array."""
    if not args.out.endswith(".npy"):
        raise ValueError(f"--out must name a .npy file, got {args.out!r}")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileNotFoundError(f"--out folder {out_dir} is a file")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    vocabulary = vocabulary_from_args(args)
    templates: List[str] = list(PROMPT_ENSEMBLE) if args.prompt_ensemble else [args.prompt]
    try:
        for t in templates:
            check_prompt(t)
    except ValueError as e:
        raise ValueError(f"--prompt: {e}") from None

    arch = args.arch
    if arch is None and args.clip in CLIP_ARCHS:
        arch = args.clip
    if arch is None and args.clip == "":
        raise ValueError('--clip "" (random CLIP) needs --arch')
    state_dict = load_clip_state_dict(args.clip, arch, args.download_root, args.seed)
    arch = arch or arch_name(infer_arch(state_dict))
    encoder = CLIPTextEncoder.from_state_dict(state_dict).to(args.device)

    names = list(vocabulary.names)
    synonyms = [list(s) for s in vocabulary.synonyms] if args.avg_synonyms else None
    n_prompts = len(templates) * (sum(len(s) for s in synonyms) if synonyms else len(names))
    logger.info("Encoding %d categories (%d prompts) with CLIP %s", len(names), n_prompts, arch)
    embeddings = (
        encode_names(encoder, names, templates, synonyms, batch_size=args.batch_size, progress=True)
        .numpy()
        .astype(np.float32)
    )  # C x D

    os.makedirs(out_dir, exist_ok=True)  # e.g. datasets/metadata/ on a fresh clone
    atomic_write(args.out, lambda f: np.save(f, embeddings))
    json_path = write_sidecar(
        args.out,
        names=names,
        synonyms=synonyms,
        prompts=templates,
        clip_weights=args.clip,
        arch=arch,
        text_fingerprint=text_fingerprint(state_dict),
        seed=args.seed if args.clip == "" else None,
        shape=embeddings.shape,
        vocabulary=args.vocabulary,
    )
    logger.info("Wrote %s (%d x %d) and %s", args.out, *embeddings.shape, json_path)
    return embeddings


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    setup_logger(name="gridclip_d2")
    try:
        dump_text_embeddings(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        # KeyError's str() adds quotes: print its message as written
        print(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
