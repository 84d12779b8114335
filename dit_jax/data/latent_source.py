"""Reading a latent data set written by `dit-jax extract-latents` (see dit_jax/latents.py).

Layout of the folder:

    latents.json              what was encoded: source data set, split, flips, VAE, latent shape,
                              scaling_factor and shift_factor, chunk size and count
    moments-000012.npy        (n, h, w, 2c) posterior mean | log-variance of chunk 12
    labels-000012.npy         (n,) int32 class labels (when the source has labels)
    chunk-000012.done         written last: the chunk is complete

The posterior moments are stored rather than one sample so that training draws a fresh latent
z = mean + exp(logvar / 2) * eps every time it sees an example (as the DiT paper's training
samples the VAE posterior per step); the cost is twice the disk of storing a sample.
Example i of the data set is source example i // 2, horizontally flipped when i is odd, when
the set was written with flips; source example i otherwise.
"""
from pathlib import Path

import numpy as np

from dit_jax.errors import InputError, MissingFileError
from dit_jax.state_files import read_json

META = "latents.json"


def chunk_paths(folder: Path, chunk: int) -> dict[str, Path]:
  return {"moments": folder / f"moments-{chunk:06d}.npy",
          "labels": folder / f"labels-{chunk:06d}.npy",
          "done": folder / f"chunk-{chunk:06d}.done"}


def read_meta(folder) -> dict:
  path = Path(folder) / META
  if not path.is_file():
    raise MissingFileError(f"data.latents={str(folder)!r} holds no {META}: write it with "
                            "`dit-jax extract-latents --config ... --vae ... --out DIR`")
  return read_json(path, "the description of extracted latents",
                   fix="delete it and rerun `dit-jax extract-latents` with the same arguments "
                       "(finished chunks are kept)")


class LatentSource:
  """A random-access source (len, [i]) of {'moments': (h, w, 2c) float32, 'label': int32}."""

  def __init__(self, folder):
    self.folder = Path(folder)
    self.meta = read_meta(self.folder)
    unfinished = [k for k in range(self.meta["num_chunks"])
                  if not chunk_paths(self.folder, k)["done"].exists()]
    if unfinished:
      raise MissingFileError(
          f"data.latents={str(self.folder)!r}: {len(unfinished)} of {self.meta['num_chunks']} "
          f"chunks are unfinished (first: {unfinished[0]}); rerun the same `dit-jax "
          "extract-latents` command to complete them")
    self.chunk_size = self.meta["chunk_size"]
    self.has_labels = self.meta["has_labels"]
    # Memory-mapped: a data set larger than RAM (ImageNet) is paged in as read.
    self.moments = [self._chunk(k, "moments", mmap_mode="r")
                    for k in range(self.meta["num_chunks"])]
    self.labels = [self._chunk(k, "labels")
                   for k in range(self.meta["num_chunks"])] if self.has_labels else None

  def _chunk(self, k: int, kind: str, mmap_mode=None) -> np.ndarray:
    """The `kind` array of chunk k; one that does not load whole (cut short, damaged) or holds
    another number of examples is an InputError naming the file and how to encode it again."""
    paths = chunk_paths(self.folder, k)
    rows = min(self.chunk_size, self.meta["num_examples"] - k * self.chunk_size)
    try:
      array = np.load(paths[kind], mmap_mode=mmap_mode, allow_pickle=False)
      problem = None if len(array) == rows else f"holds {len(array)} examples, not {rows}"
    except (ValueError, OSError, EOFError) as e:
      problem = f"does not load whole ({e})"
    if problem:
      raise InputError(f"{paths[kind]} {problem}: delete it and {paths['done'].name}, then rerun "
                       "the same `dit-jax extract-latents` command to encode that chunk again")
    return array

  def __len__(self) -> int:
    return self.meta["num_examples"]

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < len(self):
      raise IndexError(f"latent example {index} out of range [0, {len(self)})")
    chunk, row = divmod(index, self.chunk_size)
    out = {"moments": np.asarray(self.moments[chunk][row], np.float32)}
    if self.has_labels:
      out["label"] = np.int32(self.labels[chunk][row])
    return out


def sample_latent(example: dict, rng: np.random.Generator, *, scaling_factor: float,
                  shift_factor: float) -> dict:
  """{'moments', 'label'} -> {'image': (z - shift) * scale with z ~ q(z|x), 'label'}."""
  mean, logvar = np.split(example["moments"], 2, axis=-1)
  z = mean + np.exp(0.5 * logvar) * rng.standard_normal(mean.shape, np.float32)
  out = {"image": ((z - shift_factor) * scaling_factor).astype(np.float32)}
  if "label" in example:
    out["label"] = example["label"]
  return out


def check_data_config(data_config, meta: dict):
  """The config's latent_downsample / latent_channels / image_size must describe the latents
  on disk (they set the model's input shape before any data is read)."""
  get = data_config.get if hasattr(data_config, "get") else (
      lambda key, default=None: getattr(data_config, key, default))
  h, w, c = meta["latent_shape"]
  want = dict(latent_channels=c, latent_downsample=meta["downsample"],
              image_size=meta["image_size"])
  for field, value in want.items():
    have = get(field, None)
    if have is not None and have != value:
      raise InputError(f"data.{field}={have} but the latents in data.latents="
                       f"{get('latents', None)!r} have {field}={value} (latent shape "
                       f"{h}x{w}x{c}): set data.{field}={value}")
