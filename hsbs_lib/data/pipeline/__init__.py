"""The input pipeline: a dataset becomes batches of normalised images and a dict of target tensors.

``cache`` decodes a split once into a uint8 (N, 3, S, S) memory-mapped cache; ``transforms`` holds the
augmentation presets (batched on the device and per sample) and the normalisation, with
:func:`~hsbs_lib.data.pipeline.transforms.model_inputs` turning uint8 images into model input;
``loaders`` builds the device-batch and DataLoader paths the engine trains and evaluates with.
"""
