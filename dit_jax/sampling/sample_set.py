"""Sample sets for evaluation (FID-50K and the like): samples with given labels written to one
.npz in resumable chunks, drawn data parallel by every process and written by process 0.
"""
import hashlib
import json
import shutil
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from dit_jax.errors import InputError
from dit_jax.sampling import images
from dit_jax.sampling.sampler import ImageSampler, sample_in_batches


def sample_to_npz(sampler: ImageSampler, params, labels: np.ndarray, path, *, batch_size: int,
                  rng, cfg_scale=None, chunk_size: int = 10_000, write: bool = True,
                  progress=None) -> int:
  """Samples `labels` into the .npz at `path` (uint8 images in arr_0, labels in `labels`) in
  resumable chunks: chunk k (samples [k * chunk_size, (k + 1) * chunk_size), drawn with
  fold_in(rng, k)) is kept in `<path>.chunks/` once whole, and a rerun of the same command
  samples only the missing ones. The .npz appears (and the folder goes) when all are done.
  Every process samples; only `write` (process 0) writes, and its view of which chunks exist
  is the one every process follows. Returns the number of samples this call drew."""
  path = Path(path)
  folder = path.with_name(path.name + ".chunks")
  meta = {"num": int(len(labels)), "chunk_size": int(chunk_size), "batch_size": int(batch_size),
          "labels_sha": hashlib.sha256(np.asarray(labels, np.int32).tobytes()).hexdigest()}
  if write:
    folder.mkdir(parents=True, exist_ok=True)
    recorded = folder / "meta.json"
    if recorded.exists() and json.loads(recorded.read_text()) != meta:
      raise InputError(f"{folder} holds chunks of another sampling command "
                       f"({recorded.read_text().strip()}); delete it or rerun the same command")
    recorded.write_text(json.dumps(meta))
  chunk_files = [folder / f"chunk-{k:05d}.npy" for k in range(-(-len(labels) // chunk_size))]
  drawn = 0
  for k, chunk_file in enumerate(chunk_files):
    start = k * chunk_size
    chunk_labels = labels[start:start + chunk_size]
    if _on_process_0(chunk_file.exists()):
      if progress is not None:
        progress(len(chunk_labels))
      continue
    chunk = np.concatenate(list(sample_in_batches(
        sampler, params, chunk_labels, min(batch_size, len(labels)), jax.random.fold_in(rng, k),
        cfg_scale, progress)))
    drawn += len(chunk)
    if write:
      images.save_npy_atomic(chunk_file, chunk)
  if write:
    images.save_npz_chunks((np.load(f, mmap_mode="r") for f in chunk_files), labels, path)
    shutil.rmtree(folder)
  return drawn


def _on_process_0(flag: bool) -> bool:
  """Process 0's value of `flag` on every process (their disks may differ)."""
  if jax.process_count() == 1:
    return flag
  return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))
