"""Sample sets for evaluation (FID-50K and the like): samples with given labels written to one
.npz in resumable chunks, drawn data parallel by every process and written by process 0.

An evaluation set is one model and one sampler: `<out>.chunks/meta.json` records what the
samples depend on (the labels, the batching and the caller's `identity`: the model's step and
parameter hash, every sampler setting), and a rerun that differs is refused, never mixed in.
"""
import contextlib
import fcntl
import hashlib
import json
import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from dit_jax import paths, state_files
from dit_jax.errors import DitJaxError, InputError
from dit_jax.sampling import images
from dit_jax.sampling.sampler import ImageSampler, sample_in_batches


def sample_to_npz(sampler: ImageSampler, params, labels: np.ndarray, path, *, batch_size: int,
                  rng, cfg_scale=None, chunk_size: int = 10_000, write: bool = True,
                  progress=None, identity: dict | None = None, report=print) -> int:
  """Samples `labels` into the .npz at `path` (uint8 images in arr_0, labels in `labels`) in
  resumable chunks: chunk k (samples [k * chunk_size, (k + 1) * chunk_size), drawn with
  fold_in(rng, k)) is kept in `<path>.chunks/` once whole, and a rerun of the same command
  samples only the missing ones (and those that do not load whole, told through `report`).
  `identity` (JSON-able: the model and sampler settings the samples depend on) is recorded,
  and a rerun with another one is an InputError naming each differing field. The .npz appears
  (and the folder goes) when all are done. Every process samples; only `write` (process 0)
  writes, and its view of which chunks exist is the one every process follows. Returns the
  number of samples this call drew."""
  path = paths.as_path(path)  # local or gs://
  folder = path.with_name(path.name + ".chunks")
  divisor = sampler.plan.batch_divisor if sampler.plan is not None else 1
  meta = {"num": int(len(labels)), "chunk_size": int(chunk_size), "batch_size": int(batch_size),
          "batch": -(-min(batch_size, len(labels)) // divisor) * divisor,  # what draws a batch
          "labels_sha": hashlib.sha256(np.asarray(labels, np.int32).tobytes()).hexdigest(),
          **(identity or {})}
  with _one_writer(folder, path) if write else contextlib.nullcontext():
    if write:
      _record_meta(folder, meta)
    return _fill(sampler, params, labels, path, folder, batch_size=batch_size, rng=rng,
                 cfg_scale=cfg_scale, chunk_size=chunk_size, write=write, progress=progress,
                 report=report)


def _fill(sampler, params, labels, path, folder, *, batch_size, rng, cfg_scale,
          chunk_size, write, progress, report) -> int:
  """sample_to_npz's work once the set is checked: draws the missing chunks, writes the .npz."""
  present = set(paths.list_names(folder)) if write else set()  # one listing, made afresh
  chunk_files = [folder / f"chunk-{k:05d}.npy" for k in range(-(-len(labels) // chunk_size))]
  # A pixel model's samples have its input's shape: a chunk of another is damage, even chunk 0.
  drawn, shape = 0, (tuple(sampler.image_shape) if sampler.decode is None else None)
  for k, chunk_file in enumerate(chunk_files):
    start = k * chunk_size
    chunk_labels = labels[start:start + chunk_size]
    whole, shape = (_whole_chunk(chunk_file, len(chunk_labels), shape, report)
                    if chunk_file.name in present else (False, shape))
    if _on_process_0(whole):
      if progress is not None:
        progress(len(chunk_labels))
      continue
    chunk = np.concatenate(list(sample_in_batches(
        sampler, params, chunk_labels, min(batch_size, len(labels)), jax.random.fold_in(rng, k),
        cfg_scale, progress)))
    drawn += len(chunk)
    shape = shape or chunk.shape[1:]
    if write:
      state_files.write_npy(chunk_file, chunk)
  if write:
    images.save_npz_chunks((state_files.read_npy(f) for f in chunk_files), labels, path)
    state_files.remove_tree(folder)
  return drawn


@contextlib.contextmanager
def _one_writer(folder, path):
  """Holds an flock of `folder`'s writer.lock (released by the kernel when the process dies):
  a second `dit-jax sample` on the same set is refused instead of racing the first, which
  deletes the folder when it writes the .npz. A bucket has no flock: there nothing guards
  against a second writer."""
  if paths.is_remote(folder):
    yield
    return
  folder.mkdir(parents=True, exist_ok=True)
  fd = os.open(folder / "writer.lock", os.O_CREAT | os.O_RDWR, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise InputError(f"another process is writing the sample set {path} (its chunks are in "
                       f"{folder}): wait for it to finish, or choose another --out") from None
    except OSError:
      pass  # a file system without flock: go on unguarded
    yield
  finally:
    os.close(fd)


def _record_meta(folder, meta: dict):
  """Writes meta.json, or refuses when the one there describes another sample set, or when
  chunks are there without one (they cannot be checked)."""
  recorded = folder / "meta.json"
  meta = json.loads(json.dumps(meta))  # as it reads back (lists)
  try:
    old = state_files.read_json(recorded, "the settings of a resumable sample set",
                                fix=f"delete {folder} to sample again from the start")
  except FileNotFoundError:
    old = None
  if old is None and any(name.startswith("chunk-") and name.endswith(".npy")
                         for name in paths.list_names(folder)):
    raise InputError(f"{folder} holds chunks but no meta.json (the settings they were drawn "
                     "with: deleted, or never written by an older dit-jax), so they cannot be "
                     f"checked against this set; delete {folder} (or choose another --out) to "
                     "sample again from the start")
  if old is not None:
    old, now = _fields(old), _fields(meta)
    changed = {key for key in set(old) | set(now) if old.get(key) != now.get(key)}
    differ = [f"  {key}: {old.get(key, '(not recorded)')} -> {now.get(key, '(none)')}"
              for key in sorted(changed)]
    if differ:
      model = (" (the model differs: training went on, or another run; its checkpoint may be "
               "gone, so start again)" if {"step", "ema_params_sha256"} & changed else
               " (the VAE's weights differ: put the recorded VAE back in that folder, or start "
               "again)" if "decoder.vae_params_sha256" in changed else "")
      raise InputError(
          f"{folder} holds chunks of another sample set (another model or sampler); recorded "
          "-> now:\n" + "\n".join(differ) + "\nRerun with the recorded settings to resume it, "
          f"or delete {folder} (or choose another --out) to sample again from the start{model}")
    return
  state_files.write_json(recorded, meta, indent=1)


def _fields(meta: dict, prefix: str = "") -> dict:
  """`meta` with nested dicts spread into dotted keys ({"decoder": {"vae": v}} ->
  {"decoder.vae": v}), so that a refusal names the one field that differs."""
  fields = {}
  for key, value in meta.items():
    if isinstance(value, dict) and value:
      fields.update(_fields(value, f"{prefix}{key}."))
    else:
      fields[prefix + key] = value
  return fields


def _whole_chunk(chunk_file, count: int, shape, report) -> tuple[bool, tuple | None]:
  """(whether `chunk_file` holds `count` whole uint8 images, their (H, W, C)), from its header
  and size: a chunk cut short, with a bad header or of another shape is reported and drawn
  again."""
  try:
    chunk_shape, dtype, _ = state_files.npy_header(chunk_file)
    problem = None
    if dtype != np.uint8 or len(chunk_shape) != 4 or chunk_shape[0] != count:
      problem = f"holds {dtype} {chunk_shape}, not {count} uint8 images"
    elif shape is not None and tuple(chunk_shape[1:]) != tuple(shape):
      problem = f"holds images of {chunk_shape[1:]}, the other chunks {tuple(shape)}"
  except (ValueError, OSError, EOFError) as e:
    if isinstance(e, DitJaxError):  # a bucket that cannot be reached: not damage
      raise
    problem = f"does not load whole: {e}"
  if problem:
    report(f"sample set: {chunk_file} {problem}; drawing it again")
    return False, shape
  return True, tuple(chunk_shape[1:])


def _on_process_0(flag: bool) -> bool:
  """Process 0's value of `flag` on every process (their disks may differ)."""
  if jax.process_count() == 1:
    return flag
  return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))
