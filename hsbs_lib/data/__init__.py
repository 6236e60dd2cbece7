"""Data: canonical labels, SynthFER, dataset adapters, checks, the uint8 cache and transforms."""
from hsbs_lib.data.labels import CANONICAL_7, CANONICAL_8, canonical_index, canonical_name, class_names

__all__ = ["CANONICAL_7", "CANONICAL_8", "canonical_index", "canonical_name", "class_names"]
