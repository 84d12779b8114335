"""Sampling converted DiT checkpoints the way the DiT paper did.

    params, info = load_converted("ckpt/DiT-XL-2-256")
    latents = sample_latents(params, info, labels, jax.random.PRNGKey(0))   # 250-step DDPM
    images = decode_latents(latents, "path/to/sd-vae-ft-ema")              # [-1, 1], NHWC

Paper settings: 250 steps of ancestral DDPM with the learned variance on the respaced chain
(`flow.samplers.respaced_grid`), classifier-free guidance (scale 1.5 for FID, 4.0 for the
figures), latents decoded as vae.decode(z / 0.18215). The original guided only the first three
of the four latent channels; `guide_channels=3` reproduces that, the default guides all.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.convert.dit import make_model
from dit_jax.errors import InputError
from dit_jax.flow.paths import VPPath
from dit_jax.flow.samplers import respaced_grid, sample_ddpm
from dit_jax.models import model_fn

METHODS = ("ddpm", "ddim")
PAPER_LABELS = (207, 360, 387, 974, 88, 979, 417, 279)  # the classes of the DiT sample script


@functools.partial(jax.jit, static_argnames=("info_items", "method", "steps", "guided",
                                             "guide_channels", "shape"))
def _sample(params, labels, rng, cfg_scale, *, info_items, method, steps, guided, guide_channels,
            shape):
  info = dict(info_items)
  model = make_model(info)
  fn = model_fn(model, params)  # the model maps our t to its DDPM step (time_input)
  noise_rng, step_rng = jax.random.split(rng)
  x0 = jax.random.normal(noise_rng, (labels.shape[0], *shape), jnp.float32)
  cond = {"label": labels} if info["num_classes"] else None
  null_cond = model.null_condition(cond) if guided else None
  path = VPPath(info.get("num_ddpm_steps", 1000))
  grid = respaced_grid(steps, path.num_steps)
  eta = None if method == "ddpm" else 0.0
  return sample_ddpm(fn, step_rng, x0, cond, grid, path=path, eta=eta, null_cond=null_cond,
                     cfg_scale=cfg_scale, learned_variance=bool(info["learn_sigma"]),
                     guide_channels=guide_channels)


def sample_latents(params, info: dict, labels, rng, *, method: str = "ddpm", steps: int = 250,
                   cfg_scale: float = 4.0, guide_channels: int | None = None,
                   size: tuple[int, int] | None = None) -> np.ndarray:
  """Latents (B, H, W, C) of a converted model (scaled as the model sees them) for `labels`.

  size: latent (H, W), default the size the checkpoint was trained at (info['input_size']).
  Guidance runs when cfg_scale != 1 (two model evaluations per step, batched).
  """
  if method not in METHODS:
    raise InputError(f"method={method!r} is not one of {METHODS} (the DiT sampler)")
  side = info["input_size"]
  size = (side, side) if size is None else tuple(size)
  labels = jnp.asarray(labels, jnp.int32)
  if info["num_classes"] and (labels.min() < 0 or labels.max() > info["num_classes"]):
    raise InputError(f"labels must lie in 0..{info['num_classes']} ({info['num_classes']} is "
                     "the null class)")
  guided = bool(info["num_classes"]) and cfg_scale != 1.0
  if cfg_scale != 1.0 and not info["num_classes"]:
    raise InputError("cfg_scale needs a class-conditional model; use cfg_scale=1")
  shape = (*size, info["in_channels"])
  items = tuple(sorted((k, v) for k, v in info.items() if not isinstance(v, (list, dict))))
  out = _sample(params, labels, rng, jnp.float32(cfg_scale), info_items=items, method=method,
                steps=steps, guided=guided, guide_channels=guide_channels, shape=shape)
  return np.asarray(out)


def decode_latents(latents_BhwC, vae_path, batch_size: int = 8) -> np.ndarray:
  """Model latents -> images in about [-1, 1] with a diffusers-layout VAE folder (the SD VAE
  the DiT checkpoints were trained with: stabilityai/sd-vae-ft-ema or -mse)."""
  from dit_jax.convert.vae import load_vae
  vae, params = load_vae(vae_path)
  decode = jax.jit(lambda p, z: vae.apply({"params": p}, vae.unscale_latents(z),
                                          method=vae.decode))
  latents = np.asarray(latents_BhwC, np.float32)
  return np.concatenate([np.asarray(decode(params, latents[i:i + batch_size]))
                         for i in range(0, len(latents), batch_size)])
