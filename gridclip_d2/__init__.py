"""gridclip_d2: GridCLIP, an open-vocabulary one-stage detector, as a Detectron2 project.

Importing the package registers its backbones, meta-architecture and data sets with Detectron2.
"""

from .library_warnings import filter_library_warnings

filter_library_warnings()  # before Detectron2 and clip are imported below (see the module)

from . import data, modeling  # noqa: E402, F401  (only registration)
from .config import add_gridclip_config  # noqa: E402
from .predictor import GridCLIPPredictor  # noqa: E402

__all__ = ["GridCLIPPredictor", "add_gridclip_config"]
__version__ = "0.1.0"
