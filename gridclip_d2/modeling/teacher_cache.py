"""On-disk cache of the frozen CLIP teacher's image-level embeddings.

One file (written by ``tools/dump_image_embeddings.py``) holds, for every image of a data set, the
teacher embeddings of its K alignment regions (see :mod:`gridclip_d2.data.alignment_crops`)::

    torch.save({
        "meta": {"arch": str, "weights": str, "init_seed": int, "grids": [int], "size": int,
                 "datasets": [{"name": str, "json_sha1": str}]},  # the data sets it embeds
        "image_ids": [id, ...],                  # N ids, as in the dataset dicts' "image_id"
        "embeddings": Tensor,                    # N x K x D float32, L2-normalised rows
    })

The embeddings are one stacked tensor so that :meth:`TeacherCache.load` can memory-map the file
(``torch.load(mmap=True)``): data-loader workers and processes on one machine share the pages
instead of each holding a copy. ``meta`` records what produced the embeddings; loading against a
config whose teacher or training set (name, SHA-1 of its json) differs fails with the field and the
file named. Writes go to a temporary file in the same folder, renamed over the target only once
complete.
"""

import hashlib
import logging
import os
from typing import Any, Dict, Hashable, List, Optional, Sequence

import torch

from ..atomic_write import atomic_torch_save
from ..config import cache_in_use, teacher_input_size_from_cfg  # also imported from here

__all__ = [
    "TeacherCache",
    "cache_meta_from_cfg",
    "dataset_identity",
    "teacher_input_size_from_cfg",
    "cache_in_use",
]

_FORMAT_KEYS = ("meta", "image_ids", "embeddings")
_META_KEYS = ("arch", "weights", "init_seed", "grids", "size")
_DIGESTS: Dict[tuple, str] = {}

logger = logging.getLogger(__name__)


def _file_sha1(path: str) -> str:
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha1()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()[:16]
    return _DIGESTS[key]


def dataset_identity(dataset_names: Sequence[str]) -> List[Dict[str, str]]:
    """[{"name", "json_sha1"}] of registered data sets: the json they were registered from
    (``source_json_file``, else ``json_file`` metadata), hashed; "" when there is none."""
    from detectron2.data import MetadataCatalog

    out = []
    for name in dataset_names:
        meta = MetadataCatalog.get(name)
        path = meta.get("source_json_file", None) or meta.get("json_file", None) or ""
        out.append(
            {
                "name": str(name),
                "json_sha1": _file_sha1(path) if path and os.path.isfile(path) else "",
            }
        )
    return out


def cache_meta_from_cfg(cfg, dataset_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """What a cache must have been made with to serve this config's teacher on ``dataset_names``
    (default: DATASETS.TRAIN)."""
    names = list(cfg.DATASETS.TRAIN) if dataset_names is None else list(dataset_names)
    names = list(dict.fromkeys(names))  # a set named twice is embedded once
    meta = (
        {"datasets": dataset_identity(names)} if names else {}
    )  # no training set: nothing to check
    return {
        **meta,
        "arch": str(cfg.MODEL.CLIP.ARCH),
        "weights": str(cfg.MODEL.CLIP.WEIGHTS),
        "init_seed": int(cfg.MODEL.CLIP.INIT_SEED),
        "grids": [int(g) for g in cfg.MODEL.GRIDCLIP.IMAGE_ALIGN.GRIDS],
        "size": teacher_input_size_from_cfg(cfg),
    }


class TeacherCache:
    """Teacher embeddings keyed by image id; ``cache[image_id] -> K x D`` float32 tensor."""

    def __init__(
        self,
        meta: Dict[str, Any],
        image_ids: List[Hashable],
        embeddings: torch.Tensor,
        path: str = "",
    ):
        if embeddings.dim() != 3 or embeddings.shape[0] != len(image_ids):
            raise ValueError(
                f"teacher cache{' ' + path if path else ''}: embeddings must be N x K x D with "
                f"N = {len(image_ids)} image ids, got shape {tuple(embeddings.shape)}"
            )
        missing = [k for k in _META_KEYS if k not in meta]
        if missing:
            raise ValueError(f"teacher cache{' ' + path if path else ''}: meta lacks {missing}")
        self.meta = dict(meta)
        self.image_ids = list(image_ids)
        self.embeddings = embeddings  # N x K x D
        self.path = path
        self._index = {}
        for i, image_id in enumerate(self.image_ids):
            if image_id in self._index:
                raise ValueError(
                    f"teacher cache{' ' + path if path else ''}: duplicate image id {image_id!r}"
                )
            self._index[image_id] = i

    @classmethod
    def from_dict(
        cls, meta: Dict[str, Any], embeddings: Dict[Hashable, torch.Tensor]
    ) -> "TeacherCache":
        """Build from ``{image_id: K x D}`` (all with the same K and D)."""
        ids = list(embeddings)
        if ids:
            stacked = torch.stack([embeddings[i].detach().float().cpu() for i in ids])
        else:
            stacked = torch.zeros((0, sum(g * g for g in meta["grids"]), 0))
        return cls(meta, ids, stacked)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __contains__(self, image_id) -> bool:
        return image_id in self._index

    def __getitem__(self, image_id) -> torch.Tensor:
        return self.embeddings[self._index[image_id]]  # K x D

    def check_meta(self, expected: Dict[str, Any]):
        """Raise naming the first field where this cache differs from ``expected``."""
        where = f" {self.path}" if self.path else ""
        for key, value in expected.items():
            if key == "datasets" and key not in self.meta:
                logger.warning(
                    "teacher cache%s does not record its data sets: it cannot be checked "
                    "against %s",
                    where,
                    [d["name"] for d in value],
                )
                continue
            if key not in self.meta:
                raise ValueError(f"teacher cache{where} has no meta field {key!r}")
            have = self.meta[key]
            if isinstance(value, (list, tuple)):
                have, value = list(have), list(value)
            if have != value:
                raise ValueError(
                    f"teacher cache{where} was made with {key}={have!r} but the config needs "
                    f"{key}={value!r}; rerun tools/dump_image_embeddings.py or unset "
                    f"MODEL.GRIDCLIP.IMAGE_ALIGN.CACHE_FILE"
                )

    def save(self, path: str):
        """Write atomically: a temporary file in the same folder, then ``os.replace``."""
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        payload = {
            "meta": self.meta,
            "image_ids": self.image_ids,
            "embeddings": self.embeddings.detach().float().cpu().contiguous(),
        }
        atomic_torch_save(payload, path)
        self.path = path

    @classmethod
    def load(cls, path: str, expected_meta: Optional[Dict[str, Any]] = None) -> "TeacherCache":
        """Load (memory-mapped) and, when ``expected_meta`` is given, check it matches."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"teacher cache file not found: {path}")
        try:
            payload = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except Exception as e:
            raise ValueError(
                f"cannot read teacher cache {path} (expected a file written by "
                f"tools/dump_image_embeddings.py): {e}"
            ) from e
        if not isinstance(payload, dict) or any(k not in payload for k in _FORMAT_KEYS):
            keys = list(payload) if isinstance(payload, dict) else type(payload).__name__
            raise ValueError(
                f"teacher cache {path} is not in the expected format: needs keys "
                f"{list(_FORMAT_KEYS)}, found {keys}"
            )
        cache = cls(payload["meta"], payload["image_ids"], payload["embeddings"], path=path)
        if expected_meta is not None:
            cache.check_meta(expected_meta)
        return cache
