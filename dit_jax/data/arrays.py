"""In-memory arrays as a checkpointable iterator: batches drawn with replacement, batch k a pure
function of (seed, k), so the state to checkpoint is one integer.

    it = ArrayIterator({"image": images_NHWC, "text_tokens": tokens_NS}, batch_size=64, seed=0)
    batch = next(it)                   # every array indexed by the same random rows
    state = it.get_state()             # {"position": k}; it.set_state(state) resumes exactly

For experiments whose data fits in memory; under several processes each draws its own share
(process p of P takes rows of its own key stream, batch_size / P of them).
"""
from collections.abc import Mapping

import numpy as np

from dit_jax.errors import InputError


class ArrayIterator:
  def __init__(self, arrays: Mapping[str, np.ndarray], batch_size: int, seed: int = 0,
               process_index: int = 0, process_count: int = 1):
    sizes = {key: len(value) for key, value in arrays.items()}
    if len(set(sizes.values())) != 1:
      raise InputError(f"ArrayIterator arrays must have one length, got {sizes}")
    if batch_size < 1 or batch_size % process_count:
      raise InputError(f"data.batch_size={batch_size} must be >= 1 and divisible by the "
                       f"{process_count} processes")
    self.arrays = dict(arrays)
    self.size = next(iter(sizes.values()))
    self.local_batch = batch_size // process_count
    self.seed, self.process_index = seed, process_index
    self.position = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    rng = np.random.default_rng([self.seed, self.position, self.process_index])
    rows = rng.integers(0, self.size, self.local_batch)
    self.position += 1
    return {key: value[rows] for key, value in self.arrays.items()}

  def get_state(self) -> dict:
    return {"position": self.position}

  def set_state(self, state: dict):
    self.position = int(state["position"])
