"""grain pipeline: a TFDS random-access source -> per-process batches of normalised images.

Every stage is a grain MapDataset, so batch k of a process is a pure function of (config, k):
runs are reproducible and an iterator's checkpoint is a few integers.

  source[:n]      n = len - len % process_count, so every process gets as many examples
  .shuffle(seed)  one permutation per epoch (reseeded each epoch), the same on every process
  [p::P]          process p takes every P-th element: disjoint shards that cover the epoch
  .map            image -> float32 NHWC in [-1, 1] (centre crop + resize to image_size if set),
                  label -> int32, other fixed-shape numeric fields kept, text dropped
  .batch(B / P)   drop_remainder: a batch never straddles two epochs
  .repeat()       infinite

Extra fields pass through as stored: after a resize, e.g. `shapes` bboxes stay in stored pixels.

With data.latents set (a folder written by `dit-jax extract-latents`), the source is that
folder instead and `.map` becomes a random map drawing z ~ q(z | x) from the stored posterior:
'image' is then (z - shift) * scale, shape (B, h, w, c); see data/latent_source.py.
"""
import functools

from absl import flags
import grain
import jax
import numpy as np
from PIL import Image

from dit_jax.data import latent_source, sources
from dit_jax.data.config import DataConfig
from dit_jax.data.tokenizers import make_tokenizer
from dit_jax.errors import InputError


def crop_resize(image_HWC: np.ndarray, size: int) -> np.ndarray:
  """Largest centred square, resized to (size, size) with bicubic (anti-aliased when
  shrinking, as Pillow scales the kernel to the reduction)."""
  h, w, c = image_HWC.shape
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  image_HWC = image_HWC[top:top + side, left:left + side]
  if side == size:
    return image_HWC
  planes = [image_HWC] if c == 3 else [image_HWC[..., i] for i in range(c)]  # RGB or gray
  resized = [np.asarray(Image.fromarray(p).resize((size, size), Image.Resampling.BICUBIC))
             for p in planes]
  return resized[0] if c == 3 else np.stack(resized, axis=-1)


def _sized(image: np.ndarray, image_size: int | None) -> np.ndarray:
  """A stored image as (H, W, C), centre-cropped and resized to image_size when set."""
  image = image[..., None] if image.ndim == 2 else image
  if image_size and image.shape[:2] != (image_size, image_size):
    image = crop_resize(image, image_size)
  return image


def numeric_fields(features) -> dict:
  """{name: dtype tree} of the top-level features besides image/label whose every tensor is
  numeric with a fixed shape: those batch by stacking; text and ragged fields (captions, file
  names) are dropped."""
  def dtypes(info):
    if isinstance(info, dict):
      sub = {k: dtypes(v) for k, v in info.items()}
      return None if None in sub.values() else sub
    ok = np.dtype(info.np_dtype).kind in "biuf" and None not in info.shape
    return np.dtype(info.np_dtype).name if ok else None
  kept = {k: dtypes(v) for k, v in features.get_tensor_info().items()
          if k not in ("image", "label")}
  return {k: v for k, v in sorted(kept.items()) if v is not None}


def preprocess(example: dict, *, image_size: int | None, keep: dict, text=None) -> dict:
  """One decoded TFDS example -> {'image': (H, W, C) float32 in [-1, 1], 'label': int32, ...}."""
  image = np.asarray(example["image"])
  if image.dtype != np.uint8:
    raise InputError(f"expected uint8 images, got {image.dtype}: only 8-bit images are supported")
  out = {"image": _sized(image, image_size).astype(np.float32) / 127.5 - 1.0}
  if "label" in example:
    out["label"] = np.asarray(example["label"], np.int32)
  for key, dtype in keep.items():  # TFDS returns scalars as Python ints: restore the dtype
    out[key] = jax.tree.map(np.asarray, example[key], dtype)
  if text is not None:  # (tokenizer, length): the caption as tokens + mask
    caption = example["caption"]
    caption = caption.decode("utf-8") if isinstance(caption, bytes) else str(caption)
    out["text_tokens"], out["text_mask"] = text[0].encode(caption, text[1])
  return out


def _text_tokenizer(cfg: DataConfig, source):
  """(tokenizer, length) when data.text_tokenizer is set, else None (captions dropped)."""
  if not cfg.text_tokenizer:
    return None
  if "caption" not in source.dataset_info.features:
    raise InputError(f"data.text_tokenizer={cfg.text_tokenizer!r} but {cfg.name} has no "
                     "'caption' feature: unset data.text_tokenizer or use a captioned data set")
  return make_tokenizer(cfg.text_tokenizer), cfg.text_length


def _process(process_index, process_count) -> tuple[int, int]:
  """Defaults to this JAX process, so multi-host runs shard without extra arguments."""
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if count < 1 or not 0 <= index < count:
    raise InputError(f"process_index={index}, process_count={count}: need "
                     "0 <= process_index < process_count")
  return index, count


def make_dataset(data_config, *, process_index: int | None = None,
                 process_count: int | None = None) -> grain.MapDataset:
  """The infinite MapDataset of this process's batches (see the module docstring)."""
  cfg = DataConfig.from_config(data_config)
  index, count = _process(process_index, process_count)
  local_batch = cfg.local_batch_size(count)
  if cfg.latents:
    source = latent_source.LatentSource(cfg.latents)
    latent_source.check_data_config(data_config, source.meta)
  else:
    source = sources.open_source(cfg.name, cfg.split, cfg.data_dir)
  usable = len(source) - len(source) % count
  if usable // count < local_batch:
    raise InputError(
        f"data.split={cfg.split!r} of {cfg.name} has {len(source)} examples, fewer than one "
        f"batch of {local_batch} for each of {count} processes: lower data.batch_size="
        f"{cfg.batch_size} or use a larger split")
  ds = grain.MapDataset.source(source)[:usable]
  if cfg.shuffle:
    ds = ds.shuffle(seed=cfg.seed)
  ds = ds[index::count]
  if cfg.latents:  # the noise of element k is a function of (seed, k): still reproducible
    ds = ds.random_map(functools.partial(
        latent_source.sample_latent, scaling_factor=source.meta["scaling_factor"],
        shift_factor=source.meta["shift_factor"]), seed=cfg.seed)
  else:
    keep = numeric_fields(source.dataset_info.features)
    ds = ds.map(functools.partial(preprocess, image_size=cfg.image_size, keep=keep,
                                  text=_text_tokenizer(cfg, source)))
  return ds.batch(local_batch, drop_remainder=True).repeat()


def make_iterator(data_config, *, process_index: int | None = None,
                  process_count: int | None = None) -> grain.DatasetIterator:
  """An endless iterator of this process's batches: dicts of numpy arrays, 'image'
  (B, H, W, C) float32 in [-1, 1] and 'label' (B,) int32, with B = batch_size / processes.

  `it.get_state()` is a small dict to store with a checkpoint; `it.set_state(state)` on a
  fresh iterator from the same config resumes at exactly the next batch.
  """
  cfg = DataConfig.from_config(data_config)
  ds = make_dataset(data_config, process_index=process_index, process_count=process_count)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.num_threads,
                                            prefetch_buffer_size=cfg.prefetch))
  if cfg.worker_count:
    if not flags.FLAGS.is_parsed():  # grain 0.2.18 reads an absl flag here (google/grain#1355)
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.worker_count))
  return iter(ds)


def read_images(name: str, split: str, data_dir: str | None = None,
                image_size: int | None = None, limit: int | None = None
                ) -> tuple[np.ndarray, np.ndarray | None]:
  """(uint8 (N, H, W, C) images, int32 (N,) labels or None) of the first `limit` examples of
  a split, centre-cropped and resized to image_size when set (as the training pipeline does):
  reference images for evaluation and the data-set classifier's training set."""
  source = sources.open_source(name, split, data_dir)
  count = len(source) if limit is None else min(limit, len(source))
  images, labels = [], []
  for i in range(count):
    example = source[i]
    images.append(_sized(np.asarray(example["image"]), image_size))
    if "label" in example:
      labels.append(int(example["label"]))
  if not images:
    raise InputError(f"split {split!r} of {name} is empty")
  return np.stack(images), (np.asarray(labels, np.int32) if labels else None)
