"""Sampling images from a trained model: noise -> flow.Sampler -> [-1, 1] images, and grids.

The sampler expects the prediction its method integrates (velocity for euler/heun, epsilon
for ddpm/ddim); a model trained for another prediction is converted on the fly.
"""
import jax
import jax.numpy as jnp
import numpy as np

from dit_jax import flow
from dit_jax.models import class_count, model_fn
from dit_jax.sampling import images

SAMPLER_PREDICTION = {"euler": "velocity", "heun": "velocity", "ddpm": "eps", "ddim": "eps"}


class ImageSampler:
  """`sampler(params, labels, rng, cfg_scale)` -> (N, H, W, C) images in [-1, 1] for class
  labels; `sampler.sample(params, cond, rng, cfg_scale)` for any condition dict (captions).

  Compiled once per batch size; the guidance scale is a traced argument.
  """

  def __init__(self, model, objective, sample_config, image_shape, plan=None, decode=None):
    self.model = model
    self.objective = objective
    # The DDPM chain and the learned variance (ddpm_hybrid) are the objective's.
    self.sampler = flow.sampler_for(sample_config, objective)
    self.image_shape = tuple(image_shape)
    self.decode = decode  # latents -> images in [-1, 1] for models trained on VAE latents
    self.plan = plan
    # jitted(params, cond, rng, cfg_scale, count) -> samples, undecoded: what `sample` runs,
    # and what `bench` and `aot` compile. Under a sharding plan the samples come back
    # replicated, readable on every process.
    self.jitted = jax.jit(self._sample_impl, static_argnums=4,
                          out_shardings=plan.replicated() if plan is not None else None)

  def _sample_impl(self, params, cond, rng, cfg_scale, count: int):
    fn = model_fn(self.model, params)
    wanted = SAMPLER_PREDICTION[self.sampler.method]
    if self.objective.prediction != wanted:
      fn = flow.convert_model_fn(fn, self.objective.path, self.objective.prediction, wanted)
    noise_rng, sampler_rng = jax.random.split(rng)
    x0 = jax.random.normal(noise_rng, (count, *self.image_shape))
    if self.plan is not None and count % self.plan.batch_divisor == 0:
      # Data parallel: each device integrates its own share of the samples.
      x0 = jax.lax.with_sharding_constraint(x0, self.plan.batch_sharding(x0.ndim))
    if cond is None:  # an unconditional model: nothing to guide
      return self.sampler(fn, sampler_rng, x0, None)
    return self.sampler(fn, sampler_rng, x0, cond, self.model.null_condition(cond), cfg_scale)

  def sample(self, params, cond: dict | None, rng, cfg_scale: float | None = None,
             count: int | None = None) -> np.ndarray:
    """Images for `cond` (arrays with a leading batch axis: the model's condition_keys), or
    `count` unconditional images when cond is None."""
    scale = self.sampler.cfg_scale if cfg_scale is None else cfg_scale
    if cond is not None:
      cond = {key: jnp.asarray(value) for key, value in cond.items()}
      count = len(next(iter(cond.values())))
    out = np.asarray(self.jitted(params, cond, rng, jnp.float32(scale), count))
    # Decoded on this process's own device, from the (replicated) host copy of the latents.
    return out if self.decode is None else np.asarray(self.decode(out))

  def __call__(self, params, labels, rng, cfg_scale: float | None = None) -> np.ndarray:
    labels = jnp.asarray(labels, jnp.int32)
    cond = {"label": labels} if "label" in self.model.condition_spec else None
    return self.sample(params, cond, rng, cfg_scale, count=len(labels))

  def write_grid(self, params, rng, path, per_class: int = 8, cfg_scale=None, write=True,
                 rows_cond: dict | None = None):
    """Samples a grid and saves it as PNG when `write` (process 0): one row per class, or
    one row per entry of `rows_cond` (e.g. captions, from `grid_condition`)."""
    if rows_cond is None:  # a single row when unconditional
      rows = max(class_count(self.model), 1)
      samples = self(params, np.repeat(np.arange(rows), per_class), rng, cfg_scale)
    else:
      rows = len(next(iter(rows_cond.values())))
      cond = {key: np.repeat(np.asarray(value), per_class, axis=0)
              for key, value in rows_cond.items()}
      samples = self.sample(params, cond, rng, cfg_scale)
    if write:
      grid = images.make_grid(images.to_uint8(samples), rows=rows)
      images.save_png(grid, path, upscale=max(1, 64 // samples.shape[1]))


def grid_condition(model, batch: dict, rows: int = 8) -> dict | None:
  """For models conditioned on something other than class labels (captions): the condition
  of the first `rows` examples of a data batch, one grid row each. None for class models."""
  if "label" in model.condition_spec or not model.condition_keys:
    return None
  return {key: np.asarray(batch[key])[:rows] for key in model.condition_keys}


def uniform_labels(num: int, num_classes: int, seed: int) -> np.ndarray:
  """`num` class labels drawn uniformly (as the papers' FID-50K sampling); zeros, which an
  unconditional model ignores, when num_classes is 0."""
  if num_classes <= 0:
    return np.zeros(num, np.int32)
  return np.random.default_rng(seed).integers(0, num_classes, num).astype(np.int32)


def sample_in_batches(sampler: ImageSampler, params, labels: np.ndarray | dict, batch_size: int,
                      rng, cfg_scale=None, progress=None):
  """Yields uint8 samples of class `labels` (or of a condition dict of arrays with a leading
  batch axis, e.g. captions), one compiled batch of batch_size (rounded up to a multiple of
  the data-parallel device count; the last padded) at a time; batch b uses fold_in(rng, its
  first index)."""
  divisor = sampler.plan.batch_divisor if sampler.plan is not None else 1
  batch = -(-batch_size // divisor) * divisor
  conds = labels if isinstance(labels, dict) else {"label": labels}
  total = len(next(iter(conds.values())))
  for start in range(0, total, batch):
    count = min(batch, total - start)
    padded = {key: np.pad(value[start:start + batch],  # one compiled shape
                          [(0, batch - count)] + [(0, 0)] * (np.ndim(value) - 1), mode="edge")
              for key, value in conds.items()}
    rng_b = jax.random.fold_in(rng, start)
    out = (sampler.sample(params, padded, rng_b, cfg_scale) if isinstance(labels, dict)
           else sampler(params, padded["label"], rng_b, cfg_scale))
    yield images.to_uint8(out[:count])
    if progress is not None:
      progress(count)
