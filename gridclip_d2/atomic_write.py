"""Writing a file so that a kill, a crash or a full disk never leaves it half written: the bytes
go to a temporary file in the same folder, which is flushed, synced and renamed over the target
(``os.replace`` is atomic within a file system). On failure the temporary file is removed and the
previous target, if any, is untouched."""

import json
import os
import tempfile
from typing import IO, Any, Callable

import torch

__all__ = ["atomic_write", "atomic_torch_save", "atomic_json_dump"]


def atomic_write(path: str, write: Callable[[IO], None], mode: str = "wb") -> None:
    """Call ``write(file_object)`` on a temporary file beside ``path``, then rename it to
    ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a plain open() would not
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)``, atomically."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_json_dump(obj: Any, path: str, **kwargs) -> None:
    """``json.dump(obj, file, **kwargs)`` into ``path`` (UTF-8), atomically."""
    atomic_write(path, lambda f: json.dump(obj, f, **kwargs), mode="w")
