"""Sampling images from a trained model: noise -> flow.Sampler -> [-1, 1] images, and grids.

The sampler expects the prediction its method integrates (velocity for euler/heun, epsilon
for ddpm/ddim); a model trained for another prediction is converted on the fly.
"""
import jax
import jax.numpy as jnp
import numpy as np

from dit_jax import flow, images
from dit_jax.models import class_count, model_fn

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
    # Under a sharding plan the images come back replicated, readable on every process.
    self._sample = jax.jit(self._sample_impl, static_argnums=4,
                           out_shardings=plan.replicated() if plan is not None else None)

  def _sample_impl(self, params, cond, rng, cfg_scale, count: int):
    fn = model_fn(self.model, params)
    wanted = SAMPLER_PREDICTION[self.sampler.method]
    if self.objective.prediction != wanted:
      fn = flow.convert_model_fn(fn, self.objective.path, self.objective.prediction, wanted)
    noise_rng, sampler_rng = jax.random.split(rng)
    x0 = jax.random.normal(noise_rng, (count, *self.image_shape))
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
    out = np.asarray(self._sample(params, cond, rng, jnp.float32(scale), count))
    # Decoded on this process's own device, from the (replicated) host copy of the latents.
    return out if self.decode is None else np.asarray(self.decode(out))

  def __call__(self, params, labels, rng, cfg_scale: float | None = None) -> np.ndarray:
    labels = jnp.asarray(labels, jnp.int32)
    cond = {"label": labels} if "label" in self.model.condition_spec else None
    return self.sample(params, cond, rng, cfg_scale, count=len(labels))

  def grid_labels(self, per_class: int) -> np.ndarray:
    """One row per class (a single row of `per_class` samples when unconditional)."""
    classes = max(class_count(self.model), 1)
    return np.repeat(np.arange(classes), per_class)

  def write_grid(self, params, rng, path, per_class: int = 8, cfg_scale=None, write=True,
                 rows_cond: dict | None = None):
    """Samples a grid and saves it as PNG when `write` (process 0): one row per class, or
    one row per entry of `rows_cond` (e.g. captions, from `grid_condition`)."""
    if rows_cond is None:
      samples = self(params, self.grid_labels(per_class), rng, cfg_scale)
      rows = max(class_count(self.model), 1)
    else:
      rows = len(next(iter(rows_cond.values())))
      cond = {key: np.repeat(np.asarray(value), per_class, axis=0)
              for key, value in rows_cond.items()}
      samples = self.sample(params, cond, rng, cfg_scale)
    samples = images.to_uint8(samples)
    if not write:
      return
    grid = images.make_grid(samples, rows=rows)
    images.save_png(grid, path, upscale=max(1, 64 // samples.shape[1]))


def grid_condition(model, batch: dict, rows: int = 8) -> dict | None:
  """For models conditioned on something other than class labels (captions): the condition
  of the first `rows` examples of a data batch, one grid row each. None for class models."""
  if "label" in model.condition_spec or not model.condition_keys:
    return None
  return {key: np.asarray(batch[key])[:rows] for key in model.condition_keys}
