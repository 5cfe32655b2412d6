"""gridclip_d2: GridCLIP, an open-vocabulary one-stage detector, as a Detectron2 project.

Importing the package registers its backbones, meta-architecture and data sets with Detectron2.
"""
from . import compat  # noqa: F401  (run-time library fixes; must come first)
from .config import add_gridclip_config
from . import modeling  # noqa: F401  (only registration)
from . import data  # noqa: F401  (only registration)
from .predictor import GridCLIPPredictor

__all__ = ["GridCLIPPredictor", "add_gridclip_config"]
__version__ = "0.1.0"
