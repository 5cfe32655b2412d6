"""Loading OpenAI CLIP weights as a float32 state dict in OpenAI's key layout.

``MODEL.CLIP.WEIGHTS`` is one of:

- an OpenAI model name (one of ``clip.available_models()``, e.g. ``"RN50"``): the file named after
  the URL's basename is looked up in ``MODEL.CLIP.DOWNLOAD_ROOT`` (or clip's default
  ``~/.cache/clip``) and downloaded there by ``clip._download`` when absent and online;
- a path to a TorchScript archive (the format OpenAI distributes) or to a plain state dict;
- ``"synthetic"``: the small CLIP (``RNtiny96``) pretrained on the synthetic image-caption pairs,
  read from :func:`synthetic_clip_path`. Building a model never makes it: ``tools/pretrain_clip.py``
  does, and so does the setup of every entry point (``gridclip_d2.engine.setup_cfg``) on first use;
  a missing file is an error naming that command;
- ``""``: the state dict of ``clip.model.CLIP(**CLIP_ARCHS[arch])`` initialised under
  ``torch.manual_seed(seed)`` (inside ``torch.random.fork_rng``, so the caller's RNG is untouched):
  the same "random CLIP" in every process and every run.

Keys are OpenAI's (``visual.*``, ``token_embedding.weight``, ``transformer.*``, ``ln_final.*``,
``positional_embedding``, ``text_projection``, ``logit_scale``); floating tensors are float32.
The last few state dicts read are cached per process (:data:`CACHE_SIZE`): callers must treat the
returned tensors as read-only.
"""

import collections
import hashlib
import logging
import os
from typing import Dict, Iterable, Mapping, Optional

import clip
import torch
from clip.model import CLIP
from torch import nn

from ..clip_arch import arch_name, get_arch, infer_arch
from ..torch_load import load_error_text

__all__ = [
    "SYNTHETIC_CLIP_NAME",
    "SYNTHETIC_CLIP_ARCH",
    "synthetic_clip_path",
    "checkpoint_file",
    "load_clip_state_dict",
    "clip_state_dict_from_cfg",
    "openai_checkpoint_path",
    "text_fingerprint",
]

logger = logging.getLogger(__name__)

# Metadata entries of OpenAI's TorchScript archives that are not weights (clip.build_model drops
# them).
_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")
# State dicts read, least recently used first: a model and its teacher share one; a long-lived
# process (the web page) that meets other checkpoints keeps only the last few.
CACHE_SIZE = 2
_CACHE: "collections.OrderedDict[tuple, Dict[str, torch.Tensor]]" = collections.OrderedDict()

SYNTHETIC_CLIP_NAME = "synthetic"
SYNTHETIC_CLIP_ARCH = "RNtiny96"

_HOW_TO_GET = (
    'Download it on a machine with internet access, e.g. `python -c "import clip; '
    "clip.load('{name}', device='cpu', download_root='{root}')\"`, or fetch {url} into that folder "
    '(README section "CLIP weights"). '
    'MODEL.CLIP.WEIGHTS "" trains from a randomly initialised CLIP.'
)


def synthetic_clip_path(datasets_root: Optional[str] = None) -> str:
    """Where ``MODEL.CLIP.WEIGHTS synthetic`` is read from (it may not exist yet): the file
    ``$GRIDCLIP_SYNTHETIC_CLIP`` when that is set (the test suite points it at a short run of its
    own), else ``$DETECTRON2_DATASETS/synthetic_clip/RNtiny96_synthetic.pt`` (default
    ``datasets/``)."""
    if os.getenv("GRIDCLIP_SYNTHETIC_CLIP") and not datasets_root:
        return os.path.abspath(os.environ["GRIDCLIP_SYNTHETIC_CLIP"])
    root = datasets_root or os.getenv("DETECTRON2_DATASETS", "datasets")
    return os.path.abspath(
        os.path.join(root, "synthetic_clip", f"{SYNTHETIC_CLIP_ARCH}_synthetic.pt")
    )


def checkpoint_file(weights: str, download_root: str = "") -> Optional[str]:
    """The file ``MODEL.CLIP.WEIGHTS`` names: None for "" (a random CLIP); an OpenAI name's cached
    file (fetched when absent and online, see :func:`openai_checkpoint_path`); the small CLIP's
    path for "synthetic"; else the path given. Not checked for existence."""
    if weights == "":
        return None
    if weights in clip.available_models():
        return openai_checkpoint_path(weights, download_root)
    if weights == SYNTHETIC_CLIP_NAME:
        return synthetic_clip_path()
    return os.path.expanduser(weights)


def _cached(key: tuple, make) -> Dict[str, torch.Tensor]:
    """``_CACHE[key]``, made by ``make()`` when absent; the least recently used entries beyond
    ``CACHE_SIZE`` are dropped."""
    if key in _CACHE:
        _CACHE.move_to_end(key)
    else:
        _CACHE[key] = make()
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    return _CACHE[key]


def _default_download_root() -> str:
    # the clip package's own default (clip.load's download_root=None)
    return os.path.expanduser("~/.cache/clip")


def openai_checkpoint_path(name: str, download_root: str = "") -> str:
    """Local path of OpenAI model ``name``: the cached file, downloading it when possible.

    Raises FileNotFoundError saying where it looked and how to get the file when it is absent and
    cannot be downloaded (offline).
    """
    # clip's public API has no URL lookup and no download without loading the model: its private
    # _MODELS table and _download (clip-anytorch 2.6) give the file without building a model.
    url = clip.clip._MODELS[name]
    root = os.path.expanduser(download_root) if download_root else _default_download_root()
    path = os.path.join(root, os.path.basename(url))
    if os.path.isfile(path):
        return path
    try:
        logger.info("CLIP %s not found at %s; downloading %s", name, path, url)
        return clip.clip._download(url, root)
    except Exception as e:  # offline, proxy, disk: one message saying what to do
        raise FileNotFoundError(
            f"CLIP weights {name!r} (MODEL.CLIP.WEIGHTS) are not at {path} and could not be "
            f"downloaded ({type(e).__name__}: {e}). "
            + _HOW_TO_GET.format(name=name, root=root, url=url)
        ) from None


def _read_checkpoint(path: str) -> Dict[str, torch.Tensor]:
    """State dict of a TorchScript archive or of a plain (torch.save'd) state dict at ``path``."""
    try:
        return dict(torch.jit.load(path, map_location="cpu").state_dict())
    except RuntimeError:
        pass  # not a TorchScript archive: try a plain state dict
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"CLIP checkpoint {path} is neither a TorchScript archive "
            f"nor a torch.save'd state dict ({load_error_text(e)}): it is corrupt, or holds more "
            "than tensors and plain data (it is read with PyTorch's safe loader); use another file"
        ) from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"CLIP checkpoint {path} holds a {type(obj).__name__}, not a state dict "
            "(a dict of tensor names to tensors, as CLIP.state_dict() gives)"
        )
    return dict(obj)


def _read_float32(path: str) -> Dict[str, torch.Tensor]:
    state_dict = _read_checkpoint(path)
    for k in _METADATA_KEYS:
        state_dict.pop(k, None)
    logger.info("Loaded CLIP weights from %s", path)
    return {
        k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in state_dict.items()
    }


def _random_clip_state_dict(arch_key: str, seed: int) -> Dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(**get_arch(arch_key).as_kwargs())
    return model.state_dict()


def _file_key(path: str) -> tuple:
    st = os.stat(path)
    return (os.path.abspath(path), st.st_mtime_ns, st.st_size)


def load_clip_state_dict(
    weights: str, arch: Optional[str], download_root: str = "", seed: int = 0
) -> Dict[str, torch.Tensor]:
    """Float32 OpenAI-layout CLIP state dict from ``weights`` (see the module docstring).

    Args:
        weights: OpenAI model name, checkpoint path, or "" for the seeded random CLIP.
        arch: expected architecture (name in ``CLIP_ARCHS``); the checkpoint's inferred architecture
            must match it. ``None`` skips the check (not allowed with ``weights == ""``).
        download_root: where OpenAI names are looked up / downloaded ("" = clip's default).
        seed: seed of the random initialisation when ``weights == ""``.
    """
    if weights == "":
        if arch is None:
            raise ValueError('A random CLIP (MODEL.CLIP.WEIGHTS "") needs an architecture name')
        get_arch(arch)  # unknown names fail here, naming the option
        key = ("random", arch, int(seed))
        return dict(_cached(key, lambda: _random_clip_state_dict(arch, int(seed))))

    path = checkpoint_file(weights, download_root)
    if not os.path.isfile(path) and weights == SYNTHETIC_CLIP_NAME:
        raise FileNotFoundError(
            f"MODEL.CLIP.WEIGHTS {SYNTHETIC_CLIP_NAME!r}: the small CLIP is not at {path}. "
            "Make it with `python tools/pretrain_clip.py` (about 5 minutes on 2 CPU cores); "
            "train_net.py, demo/demo.py and GridCLIPPredictor.from_config_file make it on "
            "first use."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"CLIP weights (MODEL.CLIP.WEIGHTS) {weights!r}: no such file, "
            "and not an OpenAI model "
            f"name ({sorted(n for n in clip.available_models() if n.startswith('RN'))}). "
            'MODEL.CLIP.WEIGHTS "" trains from a randomly initialised CLIP.'
        )
    state_dict = _cached(("file",) + _file_key(path), lambda: _read_float32(path))
    if arch is not None:
        try:
            found = infer_arch(state_dict)
        except (KeyError, ValueError) as e:
            raise ValueError(f"CLIP checkpoint {path}: {e}") from None
        if found != get_arch(arch):
            raise ValueError(
                f"CLIP checkpoint {path} is a {arch_name(found)} model but MODEL.CLIP.ARCH is "
                f"{arch!r}; set MODEL.CLIP.ARCH to match the weights"
            )
    return dict(state_dict)


def clip_state_dict_from_cfg(cfg) -> Dict[str, torch.Tensor]:
    """``load_clip_state_dict`` with MODEL.CLIP.WEIGHTS / ARCH / DOWNLOAD_ROOT / INIT_SEED."""
    c = cfg.MODEL.CLIP
    return load_clip_state_dict(c.WEIGHTS, c.ARCH, c.DOWNLOAD_ROOT, c.INIT_SEED)


def load_exact(
    module: nn.Module,
    given: Mapping[str, torch.Tensor],
    what: str,
    prefix: str = "",
    ignore_unexpected: Iterable[str] = (),
) -> None:
    """Load ``given`` (keys relative to ``module``) only if keys and shapes match one for one.

    Errors name every missing or unexpected key (with ``prefix``, as they appear in the checkpoint)
    and any shape that differs. ``ignore_unexpected``: key suffixes the module may lack (e.g.
    BatchNorm's ``num_batches_tracked``, which FrozenBatchNorm2d has no slot for).
    """
    own = module.state_dict()
    ignore = tuple(ignore_unexpected)
    missing = sorted(prefix + k for k in own if k not in given)
    unexpected = sorted(
        prefix + k for k in given if k not in own and not (ignore and k.endswith(ignore))
    )
    if missing or unexpected:
        raise KeyError(
            f"CLIP {what} weights do not fit: "
            f"missing keys {missing[:20]}{' ...' if len(missing) > 20 else ''}; "
            f"unexpected keys {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''}"
        )
    for k, v in own.items():
        if tuple(given[k].shape) != tuple(v.shape):
            raise ValueError(
                f"CLIP weight {prefix + k} has shape {tuple(given[k].shape)}, "
                f"the {what} expects {tuple(v.shape)}"
            )
    module.load_state_dict({k: given[k] for k in own}, strict=True)


def text_fingerprint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """16 hex digits identifying the text tower of an OpenAI-layout CLIP state dict: a SHA-1 over
    the names, shapes and float32 bytes of every text entry (everything but ``visual.*`` and
    ``logit_scale``). Text embeddings made with equal fingerprints are equal; the sidecar of a
    text-embedding ``.npy`` records it (RN50's text tower: ~0.2 s)."""
    digest = hashlib.sha1()
    for k in sorted(state_dict):
        if k.startswith("visual.") or k == "logit_scale":
            continue
        v = state_dict[k].detach().to("cpu")
        v = v.float() if v.is_floating_point() else v
        digest.update(f"{k}:{tuple(v.shape)}:{v.dtype};".encode())
        digest.update(v.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
