"""Timestep distributions for training and time grids for sampling.

Convention: t in [0, 1], t = 0 pure noise, t = 1 data. SD3 and FLUX write the noise level
sigma = 1 - t; their formulas are translated here, at the boundary.

Resolution shift (SD3, Esser et al. 2024, Sec. 5.3.2; FLUX.1). In sigma,
    sigma' = shift * sigma / (1 + (shift - 1) * sigma),
which in our t reads
    t' = t / (shift - (shift - 1) * t).
Endpoints stay fixed; shift > 1 moves mass towards noise (t' < t), because a larger image
keeps more signal at the same per-pixel noise level and needs more time near t = 0.
"""
import math

import jax
import jax.numpy as jnp

from dit_jax.errors import InputError

T_DISTS = ("uniform", "logit_normal")


def shift_time(t: jax.Array, shift: float | jax.Array) -> jax.Array:
  """The SD3/FLUX shift in our convention: t' = t / (shift - (shift - 1) t); shift=1 is identity."""
  t = jnp.asarray(t, jnp.float32)
  return t / (shift - (shift - 1.0) * t)


def sd3_shift(num_tokens: int, base_tokens: int = 256) -> float:
  """SD3's resolution-dependent shift, sqrt(m / n) for m tokens against a base of n tokens.

  The base 256 is SD3's 256^2 pretraining resolution (32x32 latent, patch 2). The formula keeps
  the signal-to-noise ratio seen by a token group constant as resolution grows. SD3's released
  1024^2 models use a hand-picked shift of 3.0 rather than sqrt(4096 / 256) = 4.
  """
  if num_tokens <= 0 or base_tokens <= 0:
    raise InputError(f"token counts must be positive, got num_tokens={num_tokens}, "
                     f"base_tokens={base_tokens}")
  return math.sqrt(num_tokens / base_tokens)


def flux_shift(num_tokens: int, base_tokens: int = 256, max_tokens: int = 4096,
               base_shift: float = 0.5, max_shift: float = 1.15) -> float:
  """FLUX.1's resolution shift: exp(mu), mu linear in the token count through
  (base_tokens, base_shift) and (max_tokens, max_shift). With FLUX's time-shift exponent of 1 its
  schedule e^mu / (e^mu + 1/sigma - 1) is exactly `shift_time` with shift = e^mu.
  """
  slope = (max_shift - base_shift) / (max_tokens - base_tokens)
  return math.exp(base_shift + slope * (num_tokens - base_tokens))


def uniform_t(rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """t ~ U(0, 1), float32."""
  return jax.random.uniform(rng, shape, jnp.float32)


def logit_normal_t(rng: jax.Array, shape: tuple[int, ...], mean: float = 0.0,
                   std: float = 1.0) -> jax.Array:
  """t = sigmoid(mean + std * n), n ~ N(0, 1): SD3's best training density (mean 0, std 1).

  `mean` is the mean of logit(t) in our convention: mean > 0 favours the data end. SD3's
  lognorm(m, s) is written on sigma = 1 - t, so it is mean = -m here (the same for m = 0).
  """
  return jax.nn.sigmoid(mean + std * jax.random.normal(rng, shape, jnp.float32))


def sample_t(rng: jax.Array, shape: tuple[int, ...], dist: str = "uniform", mean: float = 0.0,
             std: float = 1.0, shift: float = 1.0) -> jax.Array:
  """Training times from `dist` (one of T_DISTS), then the resolution shift (1: none)."""
  if dist == "uniform":
    t = uniform_t(rng, shape)
  elif dist == "logit_normal":
    t = logit_normal_t(rng, shape, mean, std)
  else:
    raise InputError(f"t_dist={dist!r} is not one of {T_DISTS}")
  return shift_time(t, shift)


def uniform_grid(steps: int) -> jax.Array:
  """(steps + 1,) times 0 = t_0 < ... < t_steps = 1, equally spaced."""
  if steps < 1:
    raise InputError(f"steps={steps} must be at least 1")
  return jnp.linspace(0.0, 1.0, steps + 1, dtype=jnp.float32)


def shifted_grid(steps: int, shift: float | jax.Array = 1.0) -> jax.Array:
  """The uniform grid through `shift_time`: shift > 1 spends smaller steps near the noise end."""
  return shift_time(uniform_grid(steps), shift)
