"""CLIP's text tower and the category-name -> embedding pipeline.

``CLIPTextEncoder`` holds the ``clip`` package's modules (``Transformer``, ``LayerNorm``) under
OpenAI's own names (``token_embedding``, ``positional_embedding``, ``transformer.*``, ``ln_final``,
``text_projection``), so an OpenAI state dict's text entries load by name (``load_clip_text``), and
``encode_text(tokens) -> N x D`` is clip's ``encode_text``.

``encode_names`` turns category names into a ``C x D`` float32 matrix of L2-normalised rows: each
name (or each of its synonyms) goes into every prompt template, every prompt embedding is
normalised, a class's prompts are averaged and the mean normalised again (ViLD's recipe).
Names are cleaned as ViLD does for LVIS ("aerosol_can" -> "aerosol can").
"""

import logging
from typing import List, Optional, Sequence

import clip
import torch
import torch.nn.functional as F
from clip.model import LayerNorm, Transformer
from torch import nn
from tqdm import tqdm

from ..clip_arch import CLIPArch, arch_name, get_arch, infer_arch
from .clip_weights import clip_state_dict_from_cfg, load_clip_state_dict, load_exact

__all__ = [
    "CLIPTextEncoder",
    "PROMPT_ENSEMBLE",
    "clean_name",
    "fill_prompt",
    "check_prompt",
    "encode_names",
    "build_text_encoder",
    "prompts_from_cfg",
    "text_embeddings_from_cfg",
]

logger = logging.getLogger(__name__)

# ViLD's prompt ensemble (CLIP's ImageNet photo templates plus scene templates); "{}" is the name,
# "{article}" is "a" or "an".
PROMPT_ENSEMBLE = [
    "There is {article} {} in the scene.",
    "There is the {} in the scene.",
    "a photo of {article} {} in the scene.",
    "a photo of the {} in the scene.",
    "a photo of one {} in the scene.",
    "itap of {article} {}.",
    "itap of my {}.",
    "itap of the {}.",
    "a photo of {article} {}.",
    "a photo of my {}.",
    "a photo of the {}.",
    "a photo of one {}.",
    "a photo of many {}.",
    "a good photo of {article} {}.",
    "a good photo of the {}.",
    "a bad photo of {article} {}.",
    "a bad photo of the {}.",
    "a photo of a nice {}.",
    "a photo of the nice {}.",
    "a photo of a cool {}.",
    "a photo of the cool {}.",
    "a photo of a weird {}.",
    "a photo of the weird {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of a clean {}.",
    "a photo of the clean {}.",
    "a photo of a dirty {}.",
    "a photo of the dirty {}.",
    "a bright photo of {article} {}.",
    "a bright photo of the {}.",
    "a dark photo of {article} {}.",
    "a dark photo of the {}.",
    "a photo of a hard to see {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of {article} {}.",
    "a low resolution photo of the {}.",
    "a cropped photo of {article} {}.",
    "a cropped photo of the {}.",
    "a close-up photo of {article} {}.",
    "a close-up photo of the {}.",
    "a jpeg corrupted photo of {article} {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of {article} {}.",
    "a blurry photo of the {}.",
    "a pixelated photo of {article} {}.",
    "a pixelated photo of the {}.",
    "a black and white photo of the {}.",
    "a black and white photo of {article} {}.",
    "a plastic {}.",
    "the plastic {}.",
    "a toy {}.",
    "the toy {}.",
    "a plushie {}.",
    "the plushie {}.",
    "a cartoon {}.",
    "the cartoon {}.",
    "an embroidered {}.",
    "the embroidered {}.",
    "a painting of the {}.",
    "a painting of a {}.",
]


def clean_name(name: str) -> str:
    """LVIS/Objects365-style name -> words: "aerosol_can" -> "aerosol can", "a/b" -> "a or b"."""
    name = name.replace("_", " ").replace("/", " or ").lower()
    return " ".join(name.split()).rstrip(".")


def check_prompt(template: str) -> str:
    """Raise ValueError unless ``template`` has exactly one "{}" and formats (``{article}``
    allowed)."""
    if template.count("{}") != 1:
        raise ValueError(
            f'Prompt {template!r} must contain "{{}}" exactly once (the category name)'
        )
    try:
        template.format("x", article="a")
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(
            f'Prompt {template!r} does not format: only "{{}}" and "{{article}}" are fields ({e!r})'
        ) from None
    return template


def fill_prompt(template: str, name: str) -> str:
    """``template`` with the cleaned ``name`` (and its article) filled in."""
    name = clean_name(name)
    return template.format(name, article="an" if name[:1] in ("a", "e", "i", "o", "u") else "a")


class CLIPTextEncoder(nn.Module):
    """CLIP's text transformer; parameters carry OpenAI's key names (no prefix)."""

    def __init__(
        self,
        embed_dim: int,
        context_length: int,
        vocab_size: int,
        transformer_width: int,
        transformer_heads: int,
        transformer_layers: int,
    ):
        super().__init__()
        self.context_length = context_length
        # causal mask, as clip.model.CLIP.build_attention_mask
        mask = torch.full((context_length, context_length), float("-inf")).triu_(1)
        self.transformer = Transformer(
            transformer_width, transformer_layers, transformer_heads, mask
        )
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, transformer_width))
        self.ln_final = LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(torch.empty(transformer_width, embed_dim))
        self.embed_dim = embed_dim

    @classmethod
    def from_arch(cls, arch) -> "CLIPTextEncoder":
        a: CLIPArch = get_arch(arch)
        return cls(
            a.embed_dim,
            a.context_length,
            a.vocab_size,
            a.transformer_width,
            a.transformer_heads,
            a.transformer_layers,
        )

    @classmethod
    def from_state_dict(cls, state_dict) -> "CLIPTextEncoder":
        """Encoder of the architecture inferred from an OpenAI-layout state dict, with its weights,
        frozen."""
        encoder = cls.from_arch(infer_arch(state_dict))
        encoder.load_clip_text(state_dict)
        return encoder.freeze()

    def freeze(self) -> "CLIPTextEncoder":
        for p in self.parameters():
            p.requires_grad = False
        return self.eval()

    def load_clip_text(self, state_dict) -> None:
        """Load the text entries of an OpenAI-layout CLIP state dict (key for key, all must be
        used).

        The text entries are every key except ``visual.*`` and ``logit_scale``.
        """
        given = {
            k: v
            for k, v in state_dict.items()
            if not k.startswith("visual.") and k != "logit_scale"
        }
        load_exact(self, given, "text encoder")

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: N x L (clip.tokenize, L <= context_length) -> N x D, exactly clip's
        encode_text."""
        n_ctx = tokens.shape[-1]
        x = self.token_embedding(tokens)  # N x L x W
        x = x + self.positional_embedding[:n_ctx]
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)  # L x N x W in the transformer
        x = self.ln_final(x)
        # features at the end-of-text token (the highest token id of each sequence)
        return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ self.text_projection

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """clip.tokenize, cut after the longest text's end-of-text token: N x L, L <=
        context_length.

        The attention is causal, so the end-of-text features do not depend on the padding after it:
        cutting it gives the same embeddings for a fraction of the compute (by hand; clip pads to
        77).
        """
        tokens = clip.tokenize(list(texts), context_length=self.context_length)
        length = int(tokens.argmax(dim=-1).max()) + 1
        return tokens[:, :length]

    @torch.no_grad()
    def encode_prompts(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> N x D L2-normalised float32 embeddings."""
        device = self.text_projection.device
        return F.normalize(self.encode_text(self.tokenize(texts).to(device)).float(), dim=-1)


def encode_names(
    encoder: CLIPTextEncoder,
    names: Sequence[str],
    templates: Sequence[str],
    synonyms: Optional[Sequence[Sequence[str]]] = None,
    batch_size: int = 256,
    progress: bool = False,
) -> torch.Tensor:
    """C x D float32 L2-normalised class embeddings (see the module docstring).

    Args:
        names: C category names.
        templates: prompts with "{}" (e.g. ["a {}"] or PROMPT_ENSEMBLE).
        synonyms: optional C lists of names to average over instead of ``names`` (empty list: the
            name).
        progress: show a tqdm bar with ETA over the prompt batches.
    """
    if len(names) == 0:
        raise ValueError("encode_names: the vocabulary is empty")
    if len(templates) == 0:
        raise ValueError("encode_names: no prompt templates")
    for t in templates:
        check_prompt(t)
    if synonyms is not None and len(synonyms) != len(names):
        raise ValueError(f"encode_names: {len(synonyms)} synonym lists for {len(names)} names")
    prompts, owner = [], []
    for i, name in enumerate(names):
        alternatives = list(synonyms[i]) if synonyms is not None and len(synonyms[i]) else [name]
        for alt in alternatives:
            for t in templates:
                prompts.append(fill_prompt(t, alt))
                owner.append(i)
    owner = torch.tensor(owner)
    sums = torch.zeros(len(names), encoder.embed_dim, dtype=torch.float32)
    for start in tqdm(
        range(0, len(prompts), batch_size),
        desc="text embeddings",
        unit="batch",
        disable=not progress,
    ):
        emb = encoder.encode_prompts(prompts[start : start + batch_size]).cpu()  # B x D
        sums.index_add_(0, owner[start : start + batch_size], emb)
    return F.normalize(sums, dim=-1)  # C x D


def build_text_encoder(weights: str, arch: Optional[str], download_root: str = "", seed: int = 0):
    """Frozen CLIPTextEncoder from the same sources as ``load_clip_state_dict``."""
    return CLIPTextEncoder.from_state_dict(load_clip_state_dict(weights, arch, download_root, seed))


def prompts_from_cfg(cfg) -> List[str]:
    """The prompt templates of MODEL.GRIDCLIP.PROMPT_ENSEMBLE / PROMPT (checked)."""
    if cfg.MODEL.GRIDCLIP.PROMPT_ENSEMBLE:
        return list(PROMPT_ENSEMBLE)
    try:
        return [check_prompt(cfg.MODEL.GRIDCLIP.PROMPT)]
    except ValueError as e:
        raise ValueError(f"MODEL.GRIDCLIP.PROMPT: {e}") from None


def text_embeddings_from_cfg(
    cfg, names: Sequence[str], synonyms: Optional[Sequence[Sequence[str]]] = None
) -> torch.Tensor:
    """C x D embeddings of ``names`` (averaged over ``synonyms`` where given, as
    :func:`encode_names`) with MODEL.CLIP.* weights and MODEL.GRIDCLIP.PROMPT(_ENSEMBLE)."""
    encoder = CLIPTextEncoder.from_state_dict(clip_state_dict_from_cfg(cfg))
    templates = prompts_from_cfg(cfg)
    logger.info(
        "Computing %d text embeddings with CLIP %s (%s, %d prompt(s) per class)",
        len(names),
        arch_name(get_arch(cfg.MODEL.CLIP.ARCH)),
        cfg.MODEL.CLIP.WEIGHTS or "random init",
        len(templates),
    )
    return encode_names(
        encoder, names, templates, synonyms, progress=len(names) * len(templates) > 2000
    )
