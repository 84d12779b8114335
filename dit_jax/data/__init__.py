"""Input data: bundled TFDS data sets and grain pipelines.

    from dit_jax import data
    data.prepare("digits/16", "/tmp/tfds")               # once; no-op afterwards
    cfg = dict(name="digits/16", data_dir="/tmp/tfds", batch_size=64)
    it = data.make_iterator(cfg)                          # this JAX process's shard
    batch = next(it)                                      # image (64, 16, 16, 1) in [-1, 1]
    state = it.get_state()                                # store with the checkpoint

Importing this package registers the `digits` and `shapes` builders with TFDS.
"""
from dit_jax.data.config import DataConfig
from dit_jax.data.digits import Digits, DigitsConfig
from dit_jax.data.pipeline import make_dataset, make_iterator, read_images
from dit_jax.data.shapes import Shapes, ShapesConfig
from dit_jax.data.sources import (bundled_names, image_shape, num_classes, open_source,
                                  prepare)

__all__ = ["DataConfig", "Digits", "DigitsConfig", "Shapes", "ShapesConfig", "bundled_names",
           "image_shape", "make_dataset", "make_iterator", "num_classes", "open_source", "prepare",
           "read_images"]
