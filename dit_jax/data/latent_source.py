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

The folder may be in a bucket (gs://). Locally the moments are memory-mapped; in a bucket each
example is one ranged read when it is used, so a host reads only the examples of its own share
of the data (pipeline.py), never whole chunks: give data.num_threads enough threads to hide
the latency of those reads.
"""
import numpy as np

from dit_jax import paths, state_files
from dit_jax.errors import InputError, MissingFileError

META = "latents.json"


def chunk_paths(folder, chunk: int) -> dict:
  folder = paths.as_path(folder)
  return {"moments": folder / f"moments-{chunk:06d}.npy",
          "labels": folder / f"labels-{chunk:06d}.npy",
          "done": folder / f"chunk-{chunk:06d}.done"}


def read_meta(folder) -> dict:
  try:
    return state_files.read_json(
        paths.as_path(folder) / META, "the description of extracted latents",
        fix="delete it and rerun `dit-jax extract-latents` with the same arguments (finished "
            "chunks are kept)")
  except (FileNotFoundError, NotADirectoryError):
    raise MissingFileError(f"data.latents={str(folder)!r} holds no {META}: write it with "
                           "`dit-jax extract-latents --config ... --vae ... --out DIR`") from None


def done_chunks(folder) -> set[int]:
  """The chunks whose done marker is in `folder` (one listing, made afresh)."""
  return {int(name[len("chunk-"):-len(".done")]) for name in paths.list_names(folder)
          if name.startswith("chunk-") and name.endswith(".done")}


class _RemoteRows:
  """The rows of an .npy in a bucket, each read when it is used (one ranged read)."""

  def __init__(self, path):
    shape, dtype, offset = state_files.npy_header(path)  # one small ranged read
    self.path, self.rows = path, shape[0]
    self._layout = shape[1:], dtype, offset, int(np.prod(shape[1:])) * dtype.itemsize

  def __len__(self) -> int:
    return self.rows

  def __getitem__(self, row: int) -> np.ndarray:
    shape, dtype, offset, size = self._layout
    data = state_files.read_range(self.path, offset + row * size, size)
    return np.frombuffer(data, dtype).reshape(shape)


class LatentSource:
  """A random-access source (len, [i]) of {'moments': (h, w, 2c) float32, 'label': int32}."""

  def __init__(self, folder):
    self.folder = paths.as_path(folder)
    self.meta = read_meta(self.folder)
    done = done_chunks(self.folder)
    unfinished = [k for k in range(self.meta["num_chunks"]) if k not in done]
    if unfinished:
      raise MissingFileError(
          f"data.latents={str(self.folder)!r}: {len(unfinished)} of {self.meta['num_chunks']} "
          f"chunks are unfinished (first: {unfinished[0]}); rerun the same `dit-jax "
          "extract-latents` command to complete them")
    self.chunk_size = self.meta["chunk_size"]
    self.has_labels = self.meta["has_labels"]
    # Memory-mapped, or rows read when used: a data set larger than RAM (ImageNet) is read
    # as it is used.
    remote, chunks = paths.is_remote(self.folder), range(self.meta["num_chunks"])
    self.moments = [self._chunk(k, "moments") for k in chunks]
    self.labels = [None if remote else np.asarray(self._chunk(k, "labels")) for k in chunks] \
        if self.has_labels else None

  def _chunk(self, k: int, kind: str):
    """The `kind` array of chunk k (rows read when used in a bucket); one that does not load
    whole (cut short, damaged) or holds another number of examples is an InputError naming the
    file and how to encode it again."""
    files = chunk_paths(self.folder, k)
    rows = min(self.chunk_size, self.meta["num_examples"] - k * self.chunk_size)
    try:
      array = (_RemoteRows if paths.is_remote(self.folder) and kind == "moments"
               else state_files.read_npy)(files[kind])
      problem = None if len(array) == rows else f"holds {len(array)} examples, not {rows}"
    except (ValueError, OSError, EOFError) as e:
      problem = f"does not load whole ({e})"
    if problem:
      raise InputError(f"{files[kind]} {problem}: delete it and {files['done'].name}, then rerun "
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
      if self.labels[chunk] is None:  # in a bucket: the chunk's labels (4 KiB), when first used
        self.labels[chunk] = state_files.read_npy(chunk_paths(self.folder, chunk)["labels"])
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
