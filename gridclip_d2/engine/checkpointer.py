"""GridCLIP's checkpointer: Detectron2's ``DetectionCheckpointer`` made safe with untrusted files
and kills.

- **Reading.** ``.pth`` files go through PyTorch's safe loader (``weights_only``), which stays on.
  ``.pkl`` model-zoo files (dicts of numpy arrays) are read by an unpickler that accepts only numpy
  arrays, dtypes and plain containers: a pickle that would call anything else (e.g. ``eval``) is
  refused, naming the file and what it tried to call; Detectron2's own loader would run it. A file
  that cannot be read (truncated, not a checkpoint) is an error naming it.
- **Fit.** Weights that leave model parameters unfilled (another architecture, e.g. a ResNet-18
  classifier) are an error naming the file, the counts and the first keys, instead of Detectron2's
  warning and a random model; ``MODEL.ALLOW_PARTIAL_WEIGHTS`` allows it on purpose (fine-tuning).
- **Writing.** A checkpoint is written to a temporary file in the same folder and renamed, and so
  is ``last_checkpoint``: a kill or a full disk leaves the previous files whole. Weights holding
  NaN/inf are not saved (a diverged run must not become the checkpoint ``--resume`` picks).
- **Resuming.** When ``last_checkpoint`` is empty or names a missing or unreadable file, the newest
  loadable ``.pth`` in the folder is used, and the log says so.

By hand: fvcore's ``Checkpointer.save`` opens the final name directly and has no fallback; no
library here offers a restricted unpickler for model-zoo files.
"""

import io
import logging
import os
import pickle
from typing import Any, Dict, List

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from ..atomic_write import atomic_torch_save, atomic_write, remove_stale_temp_files
from ..torch_load import load_error_text

__all__ = ["GridCLIPCheckpointer", "safe_load_pkl"]

logger = logging.getLogger(__name__)

# What a model-zoo .pkl (a dict of numpy arrays, possibly nested) may reference, and nothing else.
_PKL_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, filename: str):
        super().__init__(file, encoding="latin1")
        self.filename = filename

    def find_class(self, module: str, name: str):
        if (module, name) in _PKL_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"{self.filename}: refusing to load: the pickle references {module}.{name}, "
            "which a weights file (numpy arrays in dicts, Detectron2's model-zoo format) never "
            "needs; loading it could run code. Convert the weights to a .pth state dict where "
            "they come from a trusted source"
        )


def safe_load_pkl(filename: str) -> Any:
    """A model-zoo ``.pkl`` read with the restricted unpickler (see the module docstring)."""
    with PathManager.open(filename, "rb") as f:
        data = f.read()
    try:
        return _RestrictedUnpickler(io.BytesIO(data), filename).load()
    except pickle.UnpicklingError:
        raise
    except Exception as e:
        raise ValueError(
            f"{filename}: not a readable .pkl weights file ({type(e).__name__}: {e})"
        ) from None


class GridCLIPCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with the safety rules of the module docstring.

    Args:
        allow_partial: accept weights that fill only part of the model
            (MODEL.ALLOW_PARTIAL_WEIGHTS).
        model, save_dir, checkpointables: as ``DetectionCheckpointer``.
    """

    def __init__(self, model, save_dir: str = "", *, allow_partial: bool = False, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.allow_partial = bool(allow_partial)
        self._loading = ""
        if save_dir and comm.is_main_process():
            remove_stale_temp_files(save_dir)  # a kill during an earlier run's save

    # ------------------------------------------------------------------ reading
    def _load_file(self, filename: str):
        self._loading = filename
        if filename.endswith(".pkl"):
            # Detectron2's own handling of the two .pkl layouts, with the restricted unpickler.
            data = safe_load_pkl(filename)
            if not isinstance(data, dict):
                raise ValueError(
                    f"{filename}: a .pkl weights file must hold a dict, got {type(data).__name__}"
                )
            if "model" in data and "__author__" in data:
                return data
            data = data.get("blobs", data)
            data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
            return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
        try:
            return super()._load_file(filename)
        except Exception as e:
            raise ValueError(
                f"Cannot read checkpoint {filename}: {load_error_text(e)}. It is truncated or "
                "corrupt, or holds objects other than tensors and plain data (it is read with "
                "PyTorch's safe loader)"
            ) from None

    def _load_model(self, checkpoint):
        heuristics = checkpoint.get("matching_heuristics", False)  # keys renamed while loading
        given = set(checkpoint.get("model", {}))
        incompatible = super()._load_model(checkpoint)
        if incompatible is None or self.allow_partial:
            return incompatible
        # Counted from the checkpoint's keys (shape mismatches were removed from it): missing_keys
        # leaves out FrozenBatchNorm statistics, which Detectron2 fills with defaults when absent.
        expected = list(self.model.state_dict().keys())
        wrong = [k for k, _, _ in incompatible.incorrect_shapes]
        skip = given | set(wrong)
        if heuristics:
            expected_set = set(expected)
            missing = [k for k in incompatible.missing_keys if k in expected_set]
        else:
            missing = [k for k in expected if k not in skip]
        if missing or wrong:
            filled = len(expected) - len(missing) - len(wrong)
            raise ValueError(
                f"Checkpoint {self._loading or '(MODEL.WEIGHTS)'} fills {filled} of the model's "
                f"{len(expected)} tensors: {len(missing)} missing (first: {missing[:5]}), "
                f"{len(wrong)} of another shape (first: {wrong[:5]}), "
                f"{len(incompatible.unexpected_keys)} it holds that the model has not "
                f"(first: {incompatible.unexpected_keys[:5]}). Is it a GridCLIP checkpoint of "
                "this config's architecture? Set MODEL.ALLOW_PARTIAL_WEIGHTS True to load part "
                "of a model on purpose"
            )
        return incompatible

    # ------------------------------------------------------------------ writing
    def save(self, name: str, **kwargs: Any) -> None:
        """fvcore's ``save``, written atomically, and refused for non-finite weights."""
        if not self.save_dir or not self.save_to_disk:
            return
        state = self.model.state_dict()
        bad = [
            k
            for k, v in state.items()
            if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())
        ]
        if bad:
            logger.error(
                "Not saving checkpoint %s: the weights hold NaN/inf (%d tensors, first %s); "
                "the run has diverged. last_checkpoint still names the last good one",
                name,
                len(bad),
                bad[:3],
            )
            return
        data = {"model": state}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write(
            os.path.join(self.save_dir, "last_checkpoint"),
            lambda f: f.write(last_filename_basename),
            "w",
        )

    # ------------------------------------------------------------------ resuming
    def _candidates(self) -> List[str]:
        """The file ``last_checkpoint`` names, then every other .pth of the folder, newest first."""
        tagged = self.get_checkpoint_file()
        tagged = tagged if tagged and os.path.basename(tagged) else ""
        others = [
            p
            for p in self.get_all_checkpoint_files()
            if os.path.abspath(p) != os.path.abspath(tagged)
        ]
        others.sort(key=lambda p: os.path.getmtime(p), reverse=True)
        return ([tagged] if tagged else []) + others

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        if not (resume and self.has_checkpoint()):
            if not path:  # fvcore would say "Initializing model from scratch", which it is not
                logger.info(
                    "MODEL.WEIGHTS is empty: the model keeps its initialisation (the CLIP weights "
                    "of MODEL.CLIP.WEIGHTS in the backbone and text classifier, the rest random)"
                )
                return {}
            return self.load(path, checkpointables=[])
        failures, chosen = [], ""
        for candidate in self._candidates():
            if not os.path.isfile(candidate):
                failures.append(f"{candidate} (missing)")
                continue
            try:
                self._load_file(candidate)  # read once to see that it is whole
            except (ValueError, pickle.UnpicklingError, OSError) as e:
                failures.append(f"{candidate} ({e})")
                continue
            chosen = candidate
            break
        if comm.get_world_size() > 1:
            chosen = comm.all_gather(chosen)[
                0
            ]  # every process resumes from the main process's choice
        if not chosen:
            raise FileNotFoundError(
                f"--resume: {os.path.join(self.save_dir, 'last_checkpoint')} exists but no "
                f"checkpoint in {self.save_dir} can be loaded: "
                f"{'; '.join(failures) or 'there is none'}. Remove "
                "last_checkpoint to start afresh"
            )
        if failures:
            logger.warning("Resuming from %s: %s", chosen, "; ".join(failures))
        return self.load(chosen)  # DetectionCheckpointer.load: main-worker file checks under DDP
