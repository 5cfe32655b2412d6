"""gridclip_d2: GridCLIP, an open-vocabulary one-stage detector, as a Detectron2 project.

Importing the package registers its backbones, meta-architecture and data sets with Detectron2.
"""

from . import data, modeling  # noqa: F401  (only registration)
from .config import add_gridclip_config
from .predictor import GridCLIPPredictor

__all__ = ["GridCLIPPredictor", "add_gridclip_config"]
__version__ = "0.1.0"
