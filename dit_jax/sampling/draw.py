"""Sampling a training run's EMA model into a file: what `dit-jax sample --workdir` does.

    sample_run("runs/quickstart", "samples.png", per_class=8)         # a grid, a row per class
    sample_run("runs/quickstart", "samples.npz", num=50_000)          # a sample set for FID
    sample_run("runs/shapes", "c.npz", captions=["a red circle"], per_class=4)

A grid or labelled .npz is streamed batch by batch (memory holds one batch); a sample set
(`num`) is drawn data parallel over every device of every process in resumable chunks.
"""
import jax
import numpy as np
from tqdm import tqdm

from dit_jax import flow, parallel, state_files
from dit_jax.config import model_input_shape, validate
from dit_jax.data.tokenizers import caption_condition
from dit_jax.errors import InputError
from dit_jax.models import class_count, create_model
from dit_jax.sampling import images, latents, runs
from dit_jax.sampling.sample_set import sample_to_npz
from dit_jax.sampling.sampler import ImageSampler, sample_in_batches, uniform_labels


def class_labels(labels, per_class: int, num_classes: int) -> np.ndarray:
  """`labels` checked against the model's classes, or `per_class` of each class in order."""
  if labels:
    array = np.array(labels, np.int32)
    if num_classes and array.max() > num_classes:
      raise InputError(f"--labels {','.join(map(str, labels))}: this model has "
                       f"{num_classes} classes, so labels lie in 0..{num_classes} "
                       f"({num_classes} is the null class, unconditional samples)")
    return array
  return np.repeat(np.arange(max(num_classes, 1)), per_class).astype(np.int32)


def caption_list(text: str | list[str] | None) -> list[str]:
  """Captions of a ';'-separated string (or a list), blanks dropped."""
  parts = text.split(";") if isinstance(text, str) else (text or [])
  return [c.strip() for c in parts if c.strip()]


def _bar(total: int):
  return tqdm(total=total, desc="sample", unit="image", dynamic_ncols=True)


def sample_run(workdir, out, *, labels=None, per_class: int = 8, num: int | None = None,
               captions=None, steps: int | None = None, method: str | None = None,
               cfg_scale: float | None = None, vae=None, seed: int = 0, batch_size: int = 256,
               chunk_size: int = 10_000, compilation_cache: str | None = None) -> str:
  """Samples the EMA model of the run in `workdir` and writes `out` (FILE.png: a grid, a row
  per class; FILE.npz: uint8 NHWC images in arr_0, labels or captions beside). Class-labelled
  runs sample `labels`, or `per_class` of each class, or with `num` a sample set of uniform
  labels; caption runs sample `per_class` of each caption. steps / method / cfg_scale replace
  the run's config.sample, `vae` its config.data.vae. Compiles through the persistent cache
  `compilation_cache` ('' none; default: the run's own). Returns a one-line summary."""
  with runs.compilation_cache(workdir, compilation_cache):
    return _sample_run(workdir, str(out), labels, per_class, num, captions, steps, method,
                       cfg_scale, vae, seed, batch_size, chunk_size)


def _sample_run(workdir, out: str, labels, per_class, num, captions, steps, method, cfg_scale,
                vae, seed, batch_size, chunk_size) -> str:
  if num and not out.endswith(".npz"):
    raise InputError(f"--num {num} writes a sample set: name it --out FILE.npz")
  plan = parallel.ShardingPlan.create() if num else None  # a sample set: every device
  config, state = runs.load_run(workdir, plan)
  for key, value in (("steps", steps), ("method", method), ("cfg_scale", cfg_scale)):
    if value is not None:
      config.sample[key] = value
  validate(config)  # e.g. method heun on a DDPM run, a negative cfg_scale
  if vae:
    config.data.vae = str(vae)
  model = create_model(config.model)
  spec = model.condition_spec
  if "text" in spec:
    raise InputError(f"{config.model.name} reads cond 'text' ({spec['text'].meaning}), which the "
                     "CLI cannot make from --captions: it needs precomputed text embeddings; "
                     "sample with ImageSampler.sample(params, cond) and cond from "
                     "dit_jax.data.text_embeddings.load_text_embeddings(FILE.npz)")
  objective = flow.make_objective(config.objective)
  sampler = ImageSampler(model, objective, config.sample, model_input_shape(config.data), plan,
                         decode=latents.decoder_for(config))
  rng = jax.random.PRNGKey(seed)
  if "text_tokens" in spec:
    return _sample_captions(config, sampler, state, caption_list(captions), per_class, out, rng,
                            cfg_scale)
  if set(spec) - {"label"}:
    raise InputError(f"{config.model.name} reads {sorted(spec)}: the CLI samples class labels "
                     "(--labels, --per-class) or captions (--captions) only")
  num_classes = class_count(model)
  if num:
    labels = uniform_labels(num, num_classes, seed)
    with _bar(num) as bar:
      drawn = sample_to_npz(sampler, state.ema_params, labels, out, batch_size=batch_size,
                            rng=rng, cfg_scale=cfg_scale, chunk_size=chunk_size,
                            write=jax.process_index() == 0, progress=bar.update,
                            identity=_identity(config, state, objective, seed))
    return (f"wrote {num} samples of step {int(state.step)} to {out} ({drawn} drawn now, "
            f"{num - drawn} from earlier chunks; labels uniform over {num_classes} classes)")
  grid_labels = class_labels(labels, per_class, num_classes)
  with _bar(len(grid_labels)) as bar:
    chunks = sample_in_batches(sampler, state.ema_params, grid_labels,
                               min(batch_size, len(grid_labels)), rng, cfg_scale,
                               progress=bar.update)
    if out.endswith(".npz"):  # streamed: memory holds one batch of samples
      images.save_npz_chunks(chunks, grid_labels, out)
    else:
      samples = np.concatenate(list(chunks))
      rows = 1 if labels else max(num_classes, 1)
      images.save_png(images.make_grid(samples, rows), out,
                      upscale=max(1, 64 // samples.shape[1]))
  return f"wrote {len(grid_labels)} samples of step {int(state.step)} to {out}"


def _identity(config, state, objective, seed: int) -> dict:
  """What the samples of a set depend on, beyond the labels and batching: the model (its
  checkpoint step and a hash of its EMA parameters), every sampler setting, the objective
  (with the prediction it resolves to), the seed and the decoder of a latent run (its VAE's
  folder, factors and a hash of its weights)."""
  fields = {"step": int(state.step), "ema_params_sha256": parallel.params_digest(state.ema_params),
            "seed": int(seed), "decoder": latents.decoder_identity(config),
            "objective.prediction": objective.prediction}
  for section in ("model", "sample", "objective"):
    fields.update({f"{section}.{key}": value for key, value in config[section].to_dict().items()
                   if f"{section}.{key}" not in fields})
  return fields


def _sample_captions(config, sampler, state, captions: list[str], per_class: int, out: str, rng,
                     cfg_scale) -> str:
  """A caption-conditioned run: `per_class` samples of each caption, a grid row each."""
  if not captions:
    raise InputError("this model is conditioned on captions: pass --captions 'a red circle at "
                     "the top left;a blue square in the centre' (';' between captions)")
  cond = {key: np.repeat(value, per_class, axis=0)
          for key, value in caption_condition(config.data, captions).items()}
  samples = images.to_uint8(sampler.sample(state.ema_params, cond, rng, cfg_scale))
  if out.endswith(".npz"):
    state_files.write_npz(out, dict(arr_0=samples,
                                    captions=np.repeat(np.array(captions), per_class)))
  else:
    images.save_png(images.make_grid(samples, rows=len(captions)), out,
                    upscale=max(1, 64 // samples.shape[1]))
  return (f"wrote {len(samples)} samples of step {int(state.step)} for {len(captions)} captions "
          f"to {out}")
