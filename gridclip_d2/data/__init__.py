# Importing these modules registers the data sets with Detectron2's catalogs.
from . import coco_ov, lvis_v1, synthetic  # noqa: F401
from .register import register_lvis_format  # noqa: F401
from .register_from_cfg import register_from_cfg  # noqa: F401
