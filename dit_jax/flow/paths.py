"""Gaussian probability paths and conversions between the things a model can predict.

Every path here has the form x_t = alpha(t) x1 + sigma(t) eps, x1 data, eps ~ N(0, I), with
t = 0 noise and t = 1 data:

  LinearPath  flow matching / rectified flow: alpha = t, sigma = 1 - t.
  VPPath      DDPM's discrete variance-preserving chain: alpha = sqrt(abar), sigma = sqrt(1 - abar).

One prediction determines the others at a given (x, t), which is how velocity, epsilon and
score models share one interface:

  x1        E[x1 | x_t]
  eps       E[eps | x_t]
  score     grad log p_t(x) = -E[eps | x_t] / sigma
  velocity  E[dx_t/dt | x_t] = alpha' x1 + sigma' eps   (the ODE drift; x1 - x0 on LinearPath)

DDPM steps. DDPM keeps its integer step n in {0, ..., N-1} (N = 1000: n = 0 barely noisy,
n = N-1 where ancestral sampling starts from pure noise). We map it to model time by
    t = 1 - (n + 1) / N,        n = N (1 - t) - 1,
so the step sampling starts from is t = 0 (as every sampler here), and the clean end, n = -1
with abar = 1, is t = 1. Between steps, log abar is interpolated linearly in t. Checkpoints
trained on the raw step (the published DiT) are wrapped at the boundary:
    model_fn = lambda x, t, c: apply(params, x, t_to_ddpm_step(t), c)
"""
import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.errors import InputError

PREDICTIONS = ("velocity", "eps", "x1", "score")


class Coefficients(NamedTuple):
  """alpha, sigma and their t-derivatives, each shaped like t."""
  alpha: jax.Array
  sigma: jax.Array
  d_alpha: jax.Array
  d_sigma: jax.Array


@dataclasses.dataclass(frozen=True)
class LinearPath:
  """x_t = t x1 + (1 - t) eps: the flow-matching path, velocity x1 - eps."""

  def coefficients(self, t: jax.Array) -> Coefficients:
    t = jnp.asarray(t, jnp.float32)
    return Coefficients(t, 1.0 - t, jnp.ones_like(t), -jnp.ones_like(t))


@functools.lru_cache(maxsize=8)
def linear_betas(num_steps: int = 1000, beta_start: float = 1e-4,
                 beta_end: float = 0.02) -> np.ndarray:
  """DDPM's linear beta schedule (Ho et al. 2020), (N,) float64."""
  return np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)


def alphas_cumprod(num_steps: int = 1000, beta_start: float = 1e-4,
                   beta_end: float = 0.02) -> np.ndarray:
  """abar_n = prod_{i <= n} (1 - beta_i), (N,) float64, computed in log space for accuracy."""
  return np.exp(np.cumsum(np.log1p(-linear_betas(num_steps, beta_start, beta_end))))


def ddpm_step_to_t(n: jax.Array, num_steps: int = 1000) -> jax.Array:
  """Integer DDPM step n (-1 = clean data) -> model time t = 1 - (n + 1) / N, float32."""
  return 1.0 - (jnp.asarray(n, jnp.float32) + 1.0) / num_steps


def t_to_ddpm_step(t: jax.Array, num_steps: int = 1000) -> jax.Array:
  """Inverse of `ddpm_step_to_t`, rounded to the nearest step: n = N (1 - t) - 1, int32."""
  t = jnp.asarray(t, jnp.float32)
  return jnp.round(num_steps * (1.0 - t) - 1.0).astype(jnp.int32)


class Posterior(NamedTuple):
  """q(x_m | x_n, x1) = N(coef_x1 x1 + coef_xt x_n, variance) on a DDPM chain, m < n."""
  coef_x1: jax.Array
  coef_xt: jax.Array
  variance: jax.Array  # beta~ = (1 - abar_m) / (1 - abar_n) beta ("fixed small")
  beta: jax.Array      # 1 - abar_n / abar_m: the (respaced) beta of the step ("fixed large")


def ddpm_posterior(abar_n, abar_m) -> Posterior:
  """The Gaussian posterior of the step n -> m (m < n; m = -1 is data, abar_m = 1) from the two
  abar values alone, so one formula serves the full chain (m = n - 1) and respaced chains.
  Plain arithmetic: numpy float64 tables stay float64, jax arrays stay jax."""
  alpha = abar_n / abar_m  # abar_n = abar_m alpha: the signal kept from m to n
  beta = 1.0 - alpha
  return Posterior(coef_x1=abar_m ** 0.5 * beta / (1.0 - abar_n),
                   coef_xt=alpha ** 0.5 * (1.0 - abar_m) / (1.0 - abar_n),
                   variance=(1.0 - abar_m) / (1.0 - abar_n) * beta, beta=beta)


def mix_log_variance(v, log_small, log_large):
  """Improved DDPM's learned variance: f log_large + (1 - f) log_small with f = (v + 1) / 2,
  v in [-1, 1] the model's extra channels (log_small from beta~, log_large from beta)."""
  frac = (v + 1.0) / 2.0
  return frac * log_large + (1.0 - frac) * log_small


@dataclasses.dataclass(frozen=True)
class VPPath:
  """DDPM's variance-preserving path: alpha = sqrt(abar), sigma = sqrt(1 - abar).

  Fields are plain numbers so the path is hashable (a static argument under jit).
  """
  num_steps: int = 1000
  beta_start: float = 1e-4
  beta_end: float = 0.02

  def alpha_bar_table(self) -> jax.Array:
    """(N + 1,) abar for steps n = -1, 0, ..., N-1 (index n + 1); abar_{-1} = 1."""
    table = np.concatenate([[1.0], alphas_cumprod(self.num_steps, self.beta_start,
                                                  self.beta_end)])
    return jnp.asarray(table, jnp.float32)

  def alpha_bar_at_step(self, n: jax.Array) -> jax.Array:
    """abar at integer steps n in {-1, ..., N-1}."""
    return self.alpha_bar_table()[jnp.asarray(n, jnp.int32) + 1]

  def coefficients(self, t: jax.Array) -> Coefficients:
    """Exact abar at the steps' times, log abar piecewise linear in t between them."""
    N = self.num_steps
    log_abar = np.concatenate([[0.0], np.log(alphas_cumprod(N, self.beta_start,
                                                            self.beta_end))])
    knots_t = 1.0 - np.arange(N + 1) / N  # t of steps n = -1 .. N-1, descending from 1 to 0
    knots_t, log_abar = knots_t[::-1], log_abar[::-1]  # ascending t
    slopes = np.diff(log_abar) / np.diff(knots_t)
    t = jnp.asarray(t, jnp.float32)
    log_a = jnp.interp(t, jnp.asarray(knots_t, jnp.float32), jnp.asarray(log_abar, jnp.float32))
    segment = jnp.clip(jnp.floor(t * N).astype(jnp.int32), 0, N - 1)
    d_log_a = jnp.asarray(slopes, jnp.float32)[segment]
    abar = jnp.exp(log_a)
    alpha, sigma = jnp.sqrt(abar), jnp.sqrt(-jnp.expm1(log_a))
    return Coefficients(alpha, sigma, 0.5 * alpha * d_log_a, -0.5 * abar * d_log_a / sigma)


def _expand(c: jax.Array, x: jax.Array) -> jax.Array:
  """Per-example coefficient (B,) -> (B, 1, 1, 1) to broadcast against x (B, H, W, C)."""
  c = jnp.asarray(c, jnp.float32)
  return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))


def _check(prediction: str):
  if prediction not in PREDICTIONS:
    raise InputError(f"prediction={prediction!r} is not one of {PREDICTIONS}")


def to_x1_eps(prediction: str, pred: jax.Array, x: jax.Array,
              coef: Coefficients) -> tuple[jax.Array, jax.Array]:
  """A prediction of kind `prediction` at x_t -> the implied (x1, eps)."""
  _check(prediction)
  a, s, da, ds = (_expand(c, x) for c in coef)
  if prediction == "x1":
    return pred, (x - a * pred) / s
  if prediction in ("eps", "score"):
    eps = pred if prediction == "eps" else -s * pred
    return (x - s * eps) / a, eps
  det = a * ds - da * s  # velocity: solve [x; v] = [[a, s], [a', s']] [x1; eps]
  return (ds * x - s * pred) / det, (a * pred - da * x) / det


def from_x1_eps(prediction: str, x1: jax.Array, eps: jax.Array,
                coef: Coefficients) -> jax.Array:
  """(x1, eps) -> the prediction of kind `prediction`."""
  _check(prediction)
  a, s, da, ds = (_expand(c, x1) for c in coef)
  return {"x1": lambda: x1, "eps": lambda: eps, "score": lambda: -eps / s,
          "velocity": lambda: da * x1 + ds * eps}[prediction]()


def convert(pred: jax.Array, x: jax.Array, coef: Coefficients, source: str,
            target: str) -> jax.Array:
  """Converts a `source` prediction at x_t into a `target` prediction (float32)."""
  pred = jnp.asarray(pred, jnp.float32)
  x = jnp.asarray(x, jnp.float32)
  if source == target:
    _check(source)
    return pred
  return from_x1_eps(target, *to_x1_eps(source, pred, x, coef), coef)


def convert_model_fn(model_fn: Callable, path, source: str, target: str) -> Callable:
  """Wraps model_fn(x, t, cond) predicting `source` on `path` so it predicts `target`.

  Output has C channels (extra variance channels are dropped). Lets a sampler that needs
  velocity or eps run a model trained for another prediction.
  """
  _check(source)
  _check(target)

  def wrapped(x_BHWC, t_B, cond):
    pred = model_fn(x_BHWC, t_B, cond)[..., :x_BHWC.shape[-1]]
    return convert(pred, x_BHWC, path.coefficients(t_B), source, target)

  return wrapped
