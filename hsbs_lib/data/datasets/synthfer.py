"""SynthFER as a registered source: rendered in memory from (seed, split, index), no root needed."""
from hsbs_lib.data.datasets.registry import register_dataset
from hsbs_lib.data.synthfer import SynthFER

register_dataset("synthfer", aliases=("synth",))(SynthFER)
