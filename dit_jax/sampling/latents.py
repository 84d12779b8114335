"""The latent pipeline: encode a TFDS image data set once with a VAE (`dit-jax
extract-latents`), train on the stored latents, decode samples back to pixels.

    dit-jax extract-latents --config configs/latent_quickstart.py --vae runs/vae --out lat/
    # then data.latents=lat/ : training batches hold scaled latents, the encoder never runs

The data set is cut into chunks of `chunk_size` examples; process p of P encodes the chunks
k with k % P == p, so hosts share the work without talking to each other. A chunk's files are
published whole (locally renamed into place, in a bucket one upload each), then it is marked
done, so an interrupted run resumes by skipping the done chunks, and the encoding is
deterministic (posterior moments, no sampling), so a resumed run writes the same files as an
uninterrupted one. `--out` may be a bucket (gs://). File layout: dit_jax/data/latent_source.py.
"""
import concurrent.futures
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from dit_jax import parallel, paths, state_files
from dit_jax.data import latent_source, sources
from dit_jax.data.config import DataConfig
from dit_jax.data.pipeline import preprocess
from dit_jax.errors import InputError
from dit_jax.sampling.vae_files import load_vae, vae_dir

FORMAT_VERSION = 1


def _meta(cfg: DataConfig, vae, vae_dir, num_source: int, flip: bool, chunk_size: int,
          image_shape, has_labels: bool, dtype: str) -> dict:
  num = num_source * (2 if flip else 1)
  f = vae.downsample
  h, w, _ = image_shape
  return {"format": FORMAT_VERSION, "name": cfg.name, "split": cfg.split,
          "image_size": h if h == w else None, "image_shape": list(image_shape),
          "flip": flip, "num_source_examples": num_source, "num_examples": num,
          "chunk_size": chunk_size, "num_chunks": -(-num // chunk_size),
          "latent_shape": [h // f, w // f, vae.latent_channels], "downsample": f,
          "scaling_factor": vae.scaling_factor, "shift_factor": vae.shift_factor,
          "vae": paths.absolute(vae_dir), "has_labels": has_labels, "dtype": dtype}


def _write_meta(out, meta: dict):
  """Writes latents.json, or checks that the one there describes the same extraction."""
  try:
    old = latent_source.read_meta(out)
  except FileNotFoundError:  # several processes may write the same content: last wins
    state_files.write_json(out / latent_source.META, meta, indent=2)
    return
  diff = {k: (old.get(k), v) for k, v in meta.items() if old.get(k) != v}
  if diff:
    raise InputError(f"--out {out} holds latents of another extraction (field: (on disk, "
                     f"now)) {diff}; use a new --out or the same arguments to resume")


def _load_images(source, indices: range, flip: bool, image_size: int | None, pool):
  """Examples of the (flip-expanded) data set: images (n, H, W, C) in [-1, 1], labels.
  Decoding and resizing run on the thread pool (PIL releases the GIL)."""
  wanted = sorted({i // 2 if flip else i for i in indices})
  load = lambda i: preprocess(source[i], image_size=image_size, keep={})
  examples = dict(zip(wanted, pool.map(load, wanted)))
  images, labels = [], []
  for i in indices:
    ex = examples[i // 2 if flip else i]
    images.append(ex["image"][:, ::-1] if flip and i % 2 else ex["image"])
    labels.append(ex.get("label", -1))
  return np.stack(images), np.asarray(labels, np.int32)


def extract_latents(data_config, vae_path, out_dir, *, flip: bool = False,
                    batch_size: int = 64, chunk_size: int = 1024, dtype: str = "float32",
                    compute_dtype: str | None = None,
                    process_index: int | None = None, process_count: int | None = None,
                    max_chunks: int | None = None, progress: bool = True) -> dict:
  """Encodes data_config's split (data.name, data.split, data.image_size) with the VAE at
  `vae_path` into `out_dir`; returns {'encoded': examples written now, 'seconds', ...}.

  `dtype` of the stored moments: 'float32' or 'float16' (half the disk); `compute_dtype`
  of the encoder ('bfloat16' is about 2x faster on GPUs). Each batch is split over this
  process's local devices. `max_chunks` stops after that many chunks (a rerun resumes).
  """
  cfg = DataConfig.from_config(data_config)
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  for flag, value in (("--batch-size", batch_size), ("--chunk-size", chunk_size),
                      ("--max-chunks", 1 if max_chunks is None else max_chunks)):
    if not isinstance(value, int) or value < 1:
      raise InputError(f"{flag} {value!r}: must be a whole number >= 1")
  if dtype not in ("float32", "float16"):
    raise InputError(f"--dtype {dtype!r}: use float32 or float16")
  if chunk_size % batch_size:
    raise InputError(f"--chunk-size {chunk_size} must be a multiple of --batch-size "
                     f"{batch_size}, so every encoder call has the same shape")
  devices = jax.local_devices()
  if batch_size % len(devices):
    raise InputError(f"--batch-size {batch_size} must be divisible by the {len(devices)} "
                     "local devices it is split over")
  folder = vae_dir(vae_path)
  vae, params = load_vae(folder, dtype=compute_dtype)
  source = sources.open_source(cfg.name, cfg.split, cfg.data_dir)
  first = preprocess(source[0], image_size=cfg.image_size, keep={})
  image_shape = first["image"].shape
  vae.check_config(*image_shape[:2])
  if image_shape[-1] != vae.in_channels:
    raise InputError(f"{cfg.name} images have {image_shape[-1]} channels but the VAE takes "
                     f"in_channels={vae.in_channels}")
  meta = _meta(cfg, vae, folder, len(source), flip, chunk_size, image_shape,
               "label" in first, dtype)
  meta["compute_dtype"] = jnp.dtype(vae.dtype).name
  meta["vae_params_sha256"] = parallel.params_digest(params)  # other weights: other latents
  out = paths.as_path(out_dir)
  paths.make_dirs(out)
  _write_meta(out, meta)

  mesh = jax.sharding.Mesh(np.array(devices), ("batch",))
  batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
  params = jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))

  @jax.jit
  def encode(params, x_BHWC):
    dist = vae.apply({"params": params}, x_BHWC, method=vae.encode)
    return jnp.concatenate([dist.mean, dist.logvar], axis=-1)

  mine = [k for k in range(meta["num_chunks"]) if k % count == index]
  done = latent_source.done_chunks(out)
  todo = [k for k in mine if k not in done]
  if max_chunks is not None:
    todo = todo[:max_chunks]
  start, encoded = time.perf_counter(), 0
  bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc="extract-latents",
             unit="chunk", disable=not progress, dynamic_ncols=True)
  pool = concurrent.futures.ThreadPoolExecutor(max(cfg.num_threads, 1))
  for k in todo:
    if not paths.is_remote(out):  # (a killed upload leaves no object)
      for stale in out.glob(f".*-{k:06d}.npy.tmp-*"):  # left by a process killed mid-write
        stale.unlink()
    lo = k * chunk_size
    indices = range(lo, min(lo + chunk_size, meta["num_examples"]))
    images, labels = _load_images(source, indices, flip, cfg.image_size, pool)
    moments = []
    for b in range(0, len(images), batch_size):
      batch = images[b:b + batch_size]
      padded = np.pad(batch, [(0, batch_size - len(batch))] + [(0, 0)] * 3)  # one shape
      moments.append(np.asarray(encode(params, jax.device_put(padded, batch_sharding)))
                     [:len(batch)])
    files = latent_source.chunk_paths(out, k)
    state_files.write_npy(files["moments"], np.concatenate(moments).astype(dtype))
    if meta["has_labels"]:
      state_files.write_npy(files["labels"], labels)
    state_files.write_atomic(files["done"], b"")  # after both files are whole
    encoded += len(indices)
    bar.update(1)
  bar.close()
  pool.shutdown()
  seconds = time.perf_counter() - start
  return {"encoded": encoded, "seconds": seconds, "examples_per_s": encoded / max(seconds, 1e-9),
          "chunks_done_now": len(todo), "chunks_of_this_process": len(mine),
          "chunks_done": len(latent_source.done_chunks(out) & set(mine)),
          "num_examples": meta["num_examples"], "latent_shape": meta["latent_shape"]}


def extract_latents_of(config, vae_path, out_dir, *, split: str | None = None,
                       **options) -> str:
  """`dit-jax extract-latents`: extract_latents of a training config's data section (its
  split replaced by `split`), `options` as extract_latents takes; returns a one-line summary."""
  data_config = config.data.to_dict()
  if split:
    data_config["split"] = split
  info = extract_latents(data_config, vae_path, out_dir, **options)
  done, mine = info["chunks_done"], info["chunks_of_this_process"]
  rest = f"; rerun to encode the other {mine - done}" if done < mine else ""
  return (f"encoded {info['encoded']} examples in {info['seconds']:.1f} s "
          f"({info['examples_per_s']:.1f}/s); {info['chunks_done_now']} chunks encoded now, "
          f"{done} of the {mine} chunks of this process done{rest}; latents "
          f"{tuple(info['latent_shape'])} x {info['num_examples']} in {out_dir}")


def decoder_for(config):
  """For a run trained on latents: its `latent_decoder`, scaled latents (B, h, w, c) -> images
  in [-1, 1] (B, H, W, C); None for pixel-space runs.

  The VAE comes from config.data.vae, else from the folder recorded in data.latents; the
  scale and shift are those the latents were written with.
  """
  source = decoder_source(config)
  return None if source is None else latent_decoder(source["vae"], source["scaling_factor"],
                                                    source["shift_factor"])


def decoder_source(config) -> dict | None:
  """{vae: folder, scaling_factor, shift_factor (None: the VAE's own)} of the decoder of a
  latent run (what `decoder_for` builds); None for pixels."""
  data = config.data
  meta = latent_source.read_meta(data.latents) if data.latents else None
  if meta is None and data.latent_downsample <= 1:
    return None
  vae_path = data.vae or (meta or {}).get("vae")
  if not vae_path:
    raise InputError("config.data.vae is not set: point it at the VAE folder used by "
                     "extract-latents to decode samples")
  return {"vae": paths.absolute(vae_path),
          "scaling_factor": meta["scaling_factor"] if meta else None,
          "shift_factor": meta["shift_factor"] if meta else None}


def decoder_identity(config) -> dict | None:
  """decoder_source plus `vae_params_sha256`, the digest of the VAE's weights
  (`parallel.params_digest`): what a sample set records, so that other weights in the same
  folder (a VAE trained again, another one copied there) are told from those it decoded with;
  None for pixels."""
  source = decoder_source(config)
  if source is None:
    return None
  return {**source, "vae_params_sha256": parallel.params_digest(load_vae(source["vae"])[1])}


def latent_decoder(vae_path, scaling_factor: float | None = None,
                   shift_factor: float | None = None, batch_size: int | None = None):
  """The one decoder of samples drawn in a VAE's latent space (latent runs, converted DiTs): a
  function scaled latents (B, h, w, c) -> images (B, H, W, C) clipped to [-1, 1], computing
  vae.decode(z / scaling_factor + shift_factor), jitted once. The factors default to the
  VAE's own (SD: 0.18215, 0); `batch_size` decodes that many latents per call (all at once
  when None), to bound the decoder's memory."""
  vae, params = load_vae(vae_path)
  scale = vae.scaling_factor if scaling_factor is None else scaling_factor
  shift = vae.shift_factor if shift_factor is None else shift_factor

  @jax.jit
  def decode_batch(z_BhwC):
    images = vae.apply({"params": params}, z_BhwC / scale + shift, method=vae.decode)
    return jnp.clip(images, -1.0, 1.0)

  def decode(z_BhwC) -> np.ndarray:
    z_BhwC = np.asarray(z_BhwC, np.float32)
    step = batch_size or max(len(z_BhwC), 1)
    return np.concatenate([np.asarray(decode_batch(z_BhwC[i:i + step]))
                           for i in range(0, len(z_BhwC), step)])
  return decode
