# Importing these modules registers them with Detectron2's registries.
