# Importing these modules registers them with Detectron2's registries.
from . import clip_resnet  # noqa: F401
from . import gridclip  # noqa: F401
from . import necks  # noqa: F401
