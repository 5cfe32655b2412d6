#!/usr/bin/env python
"""Build and install Detectron2 v0.6 from the PyPI source package ``pb1-detectron2==0.6``.

The official Detectron2 is not published on PyPI. ``pb1-detectron2==0.6`` holds the files of
upstream tag v0.6 (commit d1e04565) but does not build or run as-is on today's Python stack. This
script is the one place where those incompatibilities are fixed, before building. Run-time fixes
that apply to any Detectron2 install (CPU models in ``create_ddp_model``, optimizer state in
checkpoints) live in ``gridclip_d2/backports.py``. Every patch is idempotent (a file
already patched is left alone) and fails loudly when the text it expects is absent, so a changed
package cannot be half-patched silently.

Usage (what ``make`` runs): python scripts/install_detectron2.py [--build-dir DIR]
Where upstream Detectron2 is reachable, install it instead (see README) and skip this script.
"""

import argparse
import glob
import hashlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile

SDIST = "pb1-detectron2==0.6"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"

# Stand-in for the compiled extension: the package ships without its C++/CUDA sources
# (detectron2/layers/csrc), so no extension can be built. Only rotated boxes, deformable convolution
# and the fast COCO evaluator use it; everything this project uses is pure PyTorch/torchvision.
C_STANDIN = '''"""Stand-in for detectron2's compiled extension (not built: its C++ sources are not shipped)."""
VERSION = "stand-in"


# What detectron2.utils.collect_env (called by default_setup) asks of the extension.
def get_compiler_version():
    return "not built (stand-in for detectron2._C)"


def get_cuda_version():
    return "not built"


def has_cuda():
    return False


def __getattr__(name):
    raise NotImplementedError(
        f"detectron2._C.{name} needs detectron2's compiled extension, which this build does not have "
        "(rotated boxes, deformable convolution, fast COCO eval). Install upstream detectron2 for them."
    )
'''  # noqa: E501

# (file, old text or regex, new text, why). `None` as old means "create the file".
PATCHES = [
    (
        "setup.py",
        "ext_modules=get_extensions(),",
        "ext_modules=[],",
        "no C++ sources are shipped, so building the extension fails",
    ),
    (
        "setup.py",
        'package_data={"detectron2.model_zoo": get_model_zoo_configs()},',
        'package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]},',
        "the model-zoo config glob looks in ./configs, which this layout does not have",
    ),
    (
        "detectron2/_C.py",
        None,
        C_STANDIN,
        "`from detectron2 import _C` at import time would fail without the extension",
    ),
    (
        "detectron2/data/transforms/transform.py",
        "interp=Image.LINEAR",
        "interp=Image.BILINEAR",
        "PIL.Image.LINEAR was removed in Pillow 10 (evaluated as a default argument at import)",
    ),
    (
        "detectron2/model_zoo/model_zoo.py",
        "import pkg_resources\n",
        "",
        "pkg_resources is gone from setuptools >= 82; use importlib.resources instead",
    ),
    (
        "detectron2/model_zoo/model_zoo.py",
        "cfg_file = pkg_resources.resource_filename(\n"
        '        "detectron2.model_zoo", os.path.join("configs", config_path)\n    )',
        "import importlib.resources\n\n"
        '    cfg_file = str(importlib.resources.files("detectron2.model_zoo") / "configs" / '
        "config_path)",
        "same as above",
    ),
    (
        "detectron2/engine/launch.py",
        "    assert torch.cuda.is_available(), "
        '"cuda is not available. Please check your installation."\n',
        "    has_gpu = torch.cuda.is_available()\n",
        "CPU workers (gloo) must be able to start; upstream fixed this in 2023",
    ),
    (
        "detectron2/engine/launch.py",
        'backend="NCCL",',
        'backend="NCCL" if has_gpu else "GLOO",',
        "same as above",
    ),
    (
        "detectron2/engine/launch.py",
        "    assert num_gpus_per_machine <= torch.cuda.device_count()\n"
        "    torch.cuda.set_device(local_rank)\n",
        "    if has_gpu:\n        assert num_gpus_per_machine <= torch.cuda.device_count()\n"
        "        torch.cuda.set_device(local_rank)\n",
        "same as above",
    ),
    (
        "detectron2/data/common.py",
        "cur_idx = self._rng.sample(self._fallback_candidates, k=1)[0]",
        "cur_idx = self._rng.sample(sorted(self._fallback_candidates), k=1)[0]",
        "random.sample no longer takes a set (Python 3.11): the first image a mapper skips "
        "would end training instead of being replaced by another",
    ),
    (
        "detectron2/export/__init__.py",
        "\nfrom .api import *\n",
        "\ntry:\n    from caffe2.proto import caffe2_pb2 as _tmp  # noqa: F401\n"
        "except ImportError:\n"
        "    pass  # caffe2 is optional\nelse:\n    from .api import *\n",
        "caffe2 is no longer part of PyTorch: `import detectron2.export` (TracingAdapter, for "
        "TorchScript and ONNX export) failed; upstream made caffe2 optional the same way in 2022",
    ),
]

# np.float / np.int / np.bool / np.str were removed in numpy 1.24; they meant the builtins.
NUMPY_ALIAS = re.compile(r"\bnp\.(float|int|bool|str)\b(?![\w(])")


def apply_patches(src):
    for rel, old, new, why in PATCHES:
        path = os.path.join(src, rel)
        if old is None:
            with open(path, "w") as f:
                f.write(new)
            continue
        with open(path) as f:
            text = f.read()
        if old in text:
            text = text.replace(old, new)
        elif new and new in text:
            continue  # already patched
        else:
            raise SystemExit(f"{path}: expected text not found for the patch '{why}'")
        with open(path, "w") as f:
            f.write(text)
    for path in glob.glob(os.path.join(src, "detectron2", "**", "*.py"), recursive=True):
        with open(path) as f:
            text = f.read()
        fixed = NUMPY_ALIAS.sub(r"\1", text)
        if fixed != text:
            with open(path, "w") as f:
                f.write(fixed)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build-dir", default=None, help="where to unpack (default: a temp dir)")
    args = parser.parse_args()
    build_dir = args.build_dir or tempfile.mkdtemp(prefix="detectron2-build-")
    os.makedirs(build_dir, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    # --no-build-isolation: its setup.py imports torch, already installed here.
    subprocess.check_call(
        pip
        + [
            "download",
            "-q",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--no-build-isolation",
            SDIST,
            "-d",
            build_dir,
        ]
    )
    (archive,) = glob.glob(os.path.join(build_dir, "pb1-detectron2-0.6.tar.gz"))
    if sha256(archive) != SDIST_SHA256:
        raise SystemExit(f"{archive}: sha256 mismatch, refusing to build")
    with tarfile.open(archive) as tar:
        tar.extractall(build_dir, filter="data")
    src = os.path.join(build_dir, "pb1-detectron2-0.6")
    apply_patches(src)
    subprocess.check_call(pip + ["install", "-q", "--no-deps", "--no-build-isolation", src])
    print("detectron2 installed from", src)


if __name__ == "__main__":
    main()
