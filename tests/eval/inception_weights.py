"""Random but well-scaled weights for the FID Inception, the same from numpy alone anywhere.

Shared by test_inception.py and make_inception_reference.py, which runs where PyTorch is
installed and JAX may not be, so this file needs numpy only. Each array comes from its own
legacy `RandomState` seeded by (seed, crc32 of its key): NEP 19 freezes those streams, so the
committed fixture regenerates on any numpy, and a key's array does not depend on which other
keys a table holds (pytorch-fid's also has fc.bias and num_batches_tracked).
"""
import zlib

import numpy as np

SEED = 2015


def random_array(seed: int, key: str, shape: tuple[int, ...]) -> np.ndarray:
  """He-scaled conv and fc weights; BatchNorm near the identity, so activations stay O(1)."""
  rng = np.random.RandomState([seed, zlib.crc32(key.encode())])
  normal = lambda: rng.standard_normal(shape)
  if len(shape) == 4:  # conv OIHW, followed by a ReLU
    value = normal() * np.sqrt(2.0 / np.prod(shape[1:]))
  elif key == "fc.weight":
    value = normal() / np.sqrt(shape[1])
  elif key.endswith(".weight"):  # BatchNorm scale
    value = 1.0 + 0.1 * normal()
  elif key.endswith(".running_var"):
    value = rng.uniform(0.8, 1.2, shape)
  else:  # BatchNorm bias and running_mean, fc.bias
    value = 0.1 * normal()
  return value.astype(np.float32)


def random_state_dict(seed: int = SEED, shapes: dict[str, tuple[int, ...]] | None = None
                      ) -> dict[str, np.ndarray]:
  """{state-dict key: float32 array} for `shapes` (default: dit_jax's table of FIDInception)."""
  if shapes is None:
    from dit_jax.eval.inception import state_dict_shapes
    shapes = state_dict_shapes()
  return {key: random_array(seed, key, tuple(shape)) for key, shape in shapes.items()}


def noise_images(seed: int, shape: tuple[int, int, int, int]) -> np.ndarray:
  """uint8 noise images (B, H, W, 3) from a frozen stream."""
  return np.random.RandomState(seed).randint(0, 256, shape).astype(np.uint8)
