"""Feature networks and their batched, sharded application to uint8 images.

A `FeatureNet` is what every metric reads images through: a pure `apply(params, images)`
from uint8 NHWC images to {'pool': (N, D) features, 'logits': (N, K), optionally 'spatial'},
its parameters, and what its outputs mean. Two kinds exist: the FID Inception-v3
(`inception_net`, weights from the user's file) and a small classifier trained on a bundled
data set (`dit_jax.eval.classifier`), whose features mean something at 8x8 or 32x32.

`Extractor` runs a net over any number of images in fixed-size batches split over every
device of the mesh (the data axis), with the parameters replicated; every process passes
the same images and gets all features back.
"""
import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax import parallel
from dit_jax.errors import InputError
from dit_jax.eval import inception


@dataclasses.dataclass(frozen=True)
class FeatureNet:
  name: str                      # 'inception', or the data set a classifier was trained on
  apply: Callable[[Any, jax.Array], dict]   # (params, uint8 NHWC) -> {'pool', 'logits', ...}
  params: Any
  image_shape: tuple[int, int, int] | None = None  # the only input shape it reads (None: any)
  label_classes: int = 0         # > 0: logits are posteriors over the data set's labels
  fd_name: str = "fd"            # metric name of the Fréchet distance ('fid' for Inception)
  info: dict = dataclasses.field(default_factory=dict)  # provenance (test accuracy, file)

  @functools.cached_property
  def identity(self) -> str:
    """A digest of the parameters (sha256 hex): references record it, since a name alone
    does not tell a retrained classifier from the one a reference was computed with."""
    return parallel.params_digest(self.params)

  def check_images(self, images: np.ndarray, what: str = "images"):
    if images.dtype != np.uint8 or images.ndim != 4:
      raise InputError(f"{what}: expected uint8 (N, H, W, C) images in 0..255 (the layout "
                       f"of `dit-jax sample --out F.npz`), got {images.dtype} {images.shape}")
    if self.image_shape is not None and tuple(images.shape[1:]) != tuple(self.image_shape):
      raise InputError(f"{what} are {images.shape[1:]} but the {self.name} feature net reads "
                       f"{tuple(self.image_shape)} images: evaluate samples of that data set "
                       "with its own net (--features NAME), or use --inception FILE")


def inception_net(path, dtype=jnp.float32) -> FeatureNet:
  """The FID Inception-v3 with pytorch-fid's weights file at `path` (ADM preprocessing)."""
  return inception_feature_net(inception.load_inception(path), dtype, {"weights": str(path)})


def inception_feature_net(params, dtype=jnp.float32, info: dict | None = None) -> FeatureNet:
  module = inception.FIDInception(dtype=dtype)

  def apply(p, images):
    return module.apply({"params": p}, inception.preprocess(images, mode="adm"))
  return FeatureNet("inception", apply, params, fd_name="fid", info=info or {})


class Extractor:
  """`extractor(images)` -> {output: (N, ...) float32 numpy} for uint8 (N, H, W, C) images."""

  def __init__(self, net: FeatureNet, batch_size: int = 256,
               plan: parallel.ShardingPlan | None = None):
    self.net = net
    self.plan = plan if plan is not None else parallel.ShardingPlan.create()
    self.batch_size = self._multiple(batch_size)
    replicated = self.plan.replicated()
    self._params = jax.device_put(net.params, replicated)
    self._apply = jax.jit(net.apply, in_shardings=(replicated, self.plan.batch_sharding(4)),
                          out_shardings=replicated)

  def _multiple(self, n: int) -> int:
    """n rounded up to a multiple of the mesh's batch divisor (at least one)."""
    divisor = self.plan.batch_divisor
    return max(divisor, -(-n // divisor) * divisor)

  def __call__(self, images: np.ndarray, progress=None) -> dict[str, np.ndarray]:
    images = np.asarray(images)
    self.net.check_images(images)
    outputs: dict[str, list] = {}
    process, processes = jax.process_index(), jax.process_count()
    # no larger than the images: `--batch-size 5000000` would pad 100 images to 5M and
    # allocate the activations of all of them
    size = min(self.batch_size, self._multiple(len(images)))
    local = size // processes
    for start in range(0, len(images), size):
      batch = images[start:start + size]
      count = len(batch)
      batch = np.pad(batch, ((0, size - count),) + ((0, 0),) * 3)  # one shape
      mine = batch[process * local:(process + 1) * local]  # this process's rows
      global_batch = jax.make_array_from_process_local_data(self.plan.batch_sharding(4), mine,
                                                            batch.shape)
      out = self._apply(self._params, global_batch)
      for key, value in out.items():
        outputs.setdefault(key, []).append(np.asarray(value, np.float32)[:count])
      if progress is not None:
        progress(count)
    return {key: np.concatenate(value) for key, value in outputs.items()}
