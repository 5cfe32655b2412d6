"""The one place where warnings of the pinned libraries are filtered, each with why.

Every entry point (``train_net.py``, the demo, the web page, the tools) imports :mod:`gridclip_d2`
before Detectron2 or ``clip``, and the package's ``__init__`` calls :func:`filter_library_warnings`
first, so these warnings, raised at import or inside library code on every run, do not reach a
user who can do nothing about them. Each filter matches one message attributed to one library
module, so no other warning is hidden; the test of the demo runs it with warnings as errors.

Also here: the one log record of a library that a default run would print (torch's "No CUDA
runtime is found" when Detectron2's environment report imports ``torch.utils.cpp_extension`` on a
machine without CUDA, which is what a CPU run is).
"""

import logging
import warnings

__all__ = ["filter_library_warnings", "LIBRARY_WARNINGS"]

# (category, message regex, module regex of where the warning is attributed, why it is filtered)
LIBRARY_WARNINGS = (
    (
        FutureWarning,
        r"`torch\.jit\.\w+` is deprecated",
        r"torch\.jit\.",
        # TorchScript on purpose: OpenAI's CLIP checkpoints are TorchScript archives (read with
        # torch.jit.load), fvcore.nn.focal_loss scripts its losses at import (Detectron2 imports
        # it), and tools/export_model.py writes TorchScript. PyTorch 2.x deprecates the API but
        # still supports it.
        "TorchScript is the format of OpenAI's checkpoints and of the export",
    ),
    (
        UserWarning,
        r"pkg_resources is deprecated as an API",
        r"clip\.clip",
        # OpenAI's clip package (its newest release) imports pkg_resources for a version check.
        "clip imports pkg_resources",
    ),
    (
        UserWarning,
        r"TypedStorage is deprecated",
        r"detectron2\.utils\.comm",
        # Detectron2 v0.6's all_gather/gather (comm._serialize_to_tensor) pickles through
        # torch.ByteStorage; with several workers every evaluation gathers its predictions so.
        "Detectron2's gather across workers builds a ByteStorage",
    ),
    (
        FutureWarning,
        r"`broadcast_buffers` is deprecated",
        r"detectron2\.engine\.defaults",
        # DefaultTrainer wraps the model with create_ddp_model(model, broadcast_buffers=False);
        # PyTorch keeps honouring the argument (its replacement would sync buffers at init).
        "Detectron2's DefaultTrainer passes broadcast_buffers to DistributedDataParallel",
    ),
)


def filter_library_warnings() -> None:
    """Install the filters of :data:`LIBRARY_WARNINGS` (idempotent: ``warnings`` drops a filter
    that is already there before adding it again)."""
    for category, message, module, _why in LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    # its only WARNING: CUDA_HOME guessed on a machine without CUDA (see the module docstring)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
