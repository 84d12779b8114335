"""Sampling images from a trained model: noise -> flow.Sampler -> [-1, 1] images, and grids.

The sampler expects the prediction its method integrates (velocity for euler/heun, epsilon
for ddpm/ddim); a model trained for another prediction is converted on the fly.
"""
import jax
import jax.numpy as jnp
import numpy as np

from dit_jax import flow, images
from dit_jax.models import model_fn

SAMPLER_PREDICTION = {"euler": "velocity", "heun": "velocity", "ddpm": "eps", "ddim": "eps"}


class ImageSampler:
  """`sampler(params, labels, rng, cfg_scale)` -> (N, H, W, C) images in [-1, 1].

  Compiled once per number of labels; the guidance scale is a traced argument.
  """

  def __init__(self, model, objective, sample_config, image_shape, plan=None, decode=None):
    self.model = model
    self.objective = objective
    self.sampler = flow.make_sampler(sample_config)
    if isinstance(objective.path, flow.VPPath) and self.sampler.method == "heun":
      raise ValueError("sample.method='heun' evaluates t = 1, where a DDPM model's velocity is "
                       "infinite: use 'ddim', 'ddpm' or 'euler' with objective.kind='ddpm'")
    self.image_shape = tuple(image_shape)
    self.decode = decode  # latents -> images in [-1, 1] for models trained on VAE latents
    # Under a sharding plan the images come back replicated, readable on every process.
    self._sample = jax.jit(self._sample_impl,
                           out_shardings=plan.replicated() if plan is not None else None)

  def _sample_impl(self, params, labels, rng, cfg_scale):
    fn = model_fn(self.model, params)
    wanted = SAMPLER_PREDICTION[self.sampler.method]
    if self.objective.prediction != wanted:
      fn = flow.convert_model_fn(fn, self.objective.path, self.objective.prediction, wanted)
    noise_rng, sampler_rng = jax.random.split(rng)
    x0 = jax.random.normal(noise_rng, (labels.shape[0], *self.image_shape))
    if not self.model.num_classes:
      return self.sampler(fn, sampler_rng, x0, None)
    cond = {"label": labels}
    return self.sampler(fn, sampler_rng, x0, cond, self.model.null_condition(cond), cfg_scale)

  def __call__(self, params, labels, rng, cfg_scale: float | None = None) -> np.ndarray:
    scale = self.sampler.cfg_scale if cfg_scale is None else cfg_scale
    labels = jnp.asarray(labels, jnp.int32)
    out = np.asarray(self._sample(params, labels, rng, jnp.float32(scale)))
    # Decoded on this process's own device, from the (replicated) host copy of the latents.
    return out if self.decode is None else np.asarray(self.decode(out))

  def grid_labels(self, per_class: int) -> np.ndarray:
    """One row per class (a single row of `per_class` samples when unconditional)."""
    classes = max(self.model.num_classes, 1)
    return np.repeat(np.arange(classes), per_class)

  def write_grid(self, params, rng, path, per_class: int = 8, cfg_scale=None, write=True):
    """Samples a grid (one row per class) and saves it as PNG when `write` (process 0)."""
    labels = self.grid_labels(per_class)
    samples = images.to_uint8(self(params, labels, rng, cfg_scale))
    if not write:
      return
    grid = images.make_grid(samples, rows=max(self.model.num_classes, 1))
    images.save_png(grid, path, upscale=max(1, 64 // samples.shape[1]))
