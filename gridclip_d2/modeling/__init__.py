# Importing these modules registers them with Detectron2's registries.
from . import clip_resnet, gridclip, necks  # noqa: F401  (only registration)
