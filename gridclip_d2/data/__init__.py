# Importing these modules registers the data sets with Detectron2's catalogs.
