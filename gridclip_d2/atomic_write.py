"""Writing a file so that a kill, a crash or a full disk never leaves it half written: the bytes
go to a temporary file in the same folder, which is flushed, synced and renamed over the target
(``os.replace`` is atomic within a file system). On failure the temporary file is removed and the
previous target, if any, is untouched. Only a kill -9 (or a power cut) can leave a temporary file
behind: its name carries the writer's process id, and :func:`remove_stale_temp_files` removes those
whose writer is gone."""

import json
import logging
import os
import re
import tempfile
from typing import IO, Any, Callable, List

import torch

__all__ = ["atomic_write", "atomic_torch_save", "atomic_json_dump", "remove_stale_temp_files"]

logger = logging.getLogger(__name__)

# ".tmp-<target name>-<writer pid>-<random>", as atomic_write names its temporary files
_TEMP_NAME = re.compile(r"^\.tmp-.+-(\d+)-[^-]+$")


def atomic_write(path: str, write: Callable[[IO], None], mode: str = "wb") -> None:
    """Call ``write(file_object)`` on a temporary file beside ``path``, then rename it to
    ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    prefix = f".tmp-{os.path.basename(path)}-{os.getpid()}-"
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=folder)
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def remove_stale_temp_files(folder: str) -> List[str]:
    """Remove the temporary files of :func:`atomic_write` in ``folder`` whose writing process no
    longer runs on this machine (left by a kill during a save); returns their paths."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in sorted(os.listdir(folder)):
        match = _TEMP_NAME.match(name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            path = os.path.join(folder, name)
            try:
                os.remove(path)
            except FileNotFoundError:
                continue
            removed.append(path)
            logger.warning("Removed %s, left by an interrupted save (process %s)", path, match[1])
    return removed


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
