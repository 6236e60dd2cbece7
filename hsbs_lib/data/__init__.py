"""Data: canonical labels (``labels``), image decoding (``images``), dataset adapters (``datasets/``), SynthFER
(``synthfer/``), the input pipeline (``pipeline/``: uint8 cache, transforms, loaders), validation hold-outs
(``splits``), copy checks (``checks``, ``hsbs check``), FER2013 file writers (``fer2013_files``), face detection
(``faces``) and the eye and mouth regions of real faces from OpenCV's cascades (``face_regions``)."""
from hsbs_lib.data.labels import CANONICAL_7, CANONICAL_8, canonical_index, canonical_name, class_names

__all__ = ["CANONICAL_7", "CANONICAL_8", "canonical_index", "canonical_name", "class_names"]
