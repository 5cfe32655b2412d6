"""Which CLIP text tower a model embeds names with: the fingerprint text-embedding sidecars record.

``clip_text_fingerprint(weights, arch, download_root, seed)`` is
:func:`.clip_weights.text_fingerprint` (16 hex digits over the text-tower entries) of the CLIP that
``MODEL.CLIP.*`` loads, remembered per checkpoint file (absolute path, modification time, size) or
per random CLIP (architecture, seed). The cache holds only those short strings, the last
:data:`CACHE_SIZE` of them: checking a sidecar again (each vocabulary swap to a ``.npy``, each
evaluation set) neither reads nor hashes the checkpoint again, and no state dict is kept for it
beyond :mod:`.clip_weights`' own bounded cache.
"""

import collections
import os
from typing import Optional, Tuple

from .clip_weights import checkpoint_file, load_clip_state_dict, text_fingerprint

__all__ = ["CACHE_SIZE", "clip_text_fingerprint", "clip_text_fingerprint_from_cfg"]

CACHE_SIZE = 8
_CACHE: "collections.OrderedDict[tuple, str]" = collections.OrderedDict()


def _key(weights: str, arch: Optional[str], download_root: str, seed: int) -> Optional[Tuple]:
    """The cache key, None while the checkpoint file is not there (loading it raises or fetches)."""
    path = checkpoint_file(weights, download_root)
    if path is None:
        return ("random", arch, int(seed))
    if not os.path.isfile(path):
        return None
    st = os.stat(path)
    return ("file", os.path.abspath(path), st.st_mtime_ns, st.st_size, arch)


def clip_text_fingerprint(
    weights: str, arch: Optional[str], download_root: str = "", seed: int = 0
) -> str:
    """The text fingerprint of ``load_clip_state_dict(weights, arch, download_root, seed)``."""
    key = _key(weights, arch, download_root, seed)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    fingerprint = text_fingerprint(load_clip_state_dict(weights, arch, download_root, seed))
    key = key or _key(weights, arch, download_root, seed)
    if key is not None:
        _CACHE[key] = fingerprint
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    return fingerprint


def clip_text_fingerprint_from_cfg(cfg) -> str:
    """:func:`clip_text_fingerprint` of MODEL.CLIP.WEIGHTS / ARCH / DOWNLOAD_ROOT / INIT_SEED."""
    c = cfg.MODEL.CLIP
    return clip_text_fingerprint(c.WEIGHTS, c.ARCH, c.DOWNLOAD_ROOT, c.INIT_SEED)
