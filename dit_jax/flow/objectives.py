"""Training objectives: flow matching and epsilon-prediction DDPM behind one interface.

    objective = make_objective({"kind": "flow", "t_dist": "logit_normal"})
    loss, metrics = objective.loss(model_fn, rng, x1_BHWC, cond)

`model_fn(x_BHWC, t_B, cond) -> out` is any denoiser (e.g. a bound `model.apply`); out has C
channels, or 2C for learned-variance models, of which the first C are the prediction. Losses
are the mean squared error over those C channels, in float32. The learned-variance channels
get no loss here, except in `DDPMHybrid` (DiT's mse + variational-bound term).

`loss` draws t (or DDPM's step) and the noise, then averages `losses_at`, the per-example
loss at given times and noise; evaluations call `losses_at` with fixed ones (loss by noise
level, `dit_jax.eval.loss_by_t`), so both measure the one loss.
"""
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.errors import InputError
from dit_jax.flow import paths, timesteps
from dit_jax.flow.paths import (LinearPath, VPPath, ddpm_step_to_t, from_x1_eps,
                                t_to_ddpm_step)

KINDS = ("flow", "ddpm", "ddpm_hybrid")  # ddpm_hybrid: DiT's mse + L_vb (learned variance)
TRAIN_PREDICTIONS = ("velocity", "eps", "x1")  # the score blows up at t -> 1: not a target


def _example_axes(x: jax.Array) -> tuple[int, ...]:
  return tuple(range(1, x.ndim))


def regression_losses(objective, model_fn: Callable, x_t: jax.Array, t_B: jax.Array, cond: Any,
                      x1: jax.Array, eps: jax.Array) -> jax.Array:
  """(B,) float32: per example, the mean over (H, W, C) of (model_fn(x_t, t, cond)[..., :C] -
  target)^2, with the target the objective's prediction of (x1, eps)."""
  target = from_x1_eps(objective.prediction, x1, eps, objective.path.coefficients(t_B))
  pred = model_fn(x_t, t_B, cond)[..., :x_t.shape[-1]].astype(jnp.float32)
  return jnp.mean(jnp.square(pred - target), axis=_example_axes(x_t))


def _averaged(losses_B: jax.Array, t_B: jax.Array) -> tuple[jax.Array, dict]:
  """The batch loss (every example has as many values, so the mean of the per-example means is
  the mean over everything) and the metrics {'loss', 't_mean'}."""
  loss = jnp.mean(losses_B)
  return loss, {"loss": loss, "t_mean": jnp.mean(t_B)}


def _float32(*arrays: jax.Array) -> tuple[jax.Array, ...]:
  return tuple(jnp.asarray(a, jnp.float32) for a in arrays)


def _noise_like(rng: jax.Array, x1_BHWC: jax.Array) -> tuple[jax.Array, jax.Array]:
  x1 = jnp.asarray(x1_BHWC, jnp.float32)
  return x1, jax.random.normal(rng, x1.shape, jnp.float32)


@dataclasses.dataclass(frozen=True)
class FlowMatching:
  """x_t = (1 - t) x0 + t x1 with t from `t_dist` (then shifted); target x1 - x0 for
  'velocity' (or x0 for 'eps', x1 for 'x1')."""
  t_dist: str = "uniform"      # one of timesteps.T_DISTS
  logit_mean: float = 0.0      # logit_normal: mean of logit(t) (> 0 favours the data end)
  logit_std: float = 1.0       # logit_normal: std of logit(t)
  shift: float = 1.0           # SD3/FLUX resolution shift of t (1: none)
  prediction: str = "velocity"

  @property
  def path(self) -> LinearPath:
    return LinearPath()

  def sampler_fields(self) -> dict:
    """What `flow.make_sampler` takes from the objective: nothing (no DDPM chain)."""
    return {}

  def sample_t(self, rng: jax.Array, batch: int) -> jax.Array:
    """(batch,) training times."""
    return timesteps.sample_t(rng, (batch,), self.t_dist, self.logit_mean, self.logit_std,
                              self.shift)

  def losses_at(self, model_fn: Callable, x1_BHWC: jax.Array, noise_BHWC: jax.Array,
                t_B: jax.Array, cond: Any) -> jax.Array:
    """(B,) float32 per-example losses at times t_B with the noise x0 = noise_BHWC."""
    x1, x0, t_B = _float32(x1_BHWC, noise_BHWC, t_B)
    t = t_B.reshape((-1,) + (1,) * (x1.ndim - 1))
    return regression_losses(self, model_fn, (1.0 - t) * x0 + t * x1, t_B, cond, x1, x0)

  def loss(self, model_fn: Callable, rng: jax.Array, x1_BHWC: jax.Array,
           cond: Any) -> tuple[jax.Array, dict]:
    """Data (B, H, W, C) -> (float32 scalar loss, {'loss', 't_mean'})."""
    rng_t, rng_noise = jax.random.split(rng)
    x1, x0 = _noise_like(rng_noise, x1_BHWC)
    t_B = self.sample_t(rng_t, x1.shape[0])
    return _averaged(self.losses_at(model_fn, x1, x0, t_B, cond), t_B)


@dataclasses.dataclass(frozen=True)
class DDPM:
  """Ho et al.'s objective: n ~ U{0..N-1}, x_n = sqrt(abar_n) x1 + sqrt(1 - abar_n) eps,
  target eps. The model sees t = 1 - (n + 1) / N (see `paths.ddpm_step_to_t`)."""
  num_steps: int = 1000
  beta_start: float = 1e-4
  beta_end: float = 0.02
  prediction: str = "eps"

  @property
  def path(self) -> VPPath:
    return VPPath(self.num_steps, self.beta_start, self.beta_end)

  def sampler_fields(self) -> dict:
    """What `flow.make_sampler` takes from the objective: the chain the model learned."""
    return {"path": self.path}

  def draw(self, rng: jax.Array, x1_BHWC: jax.Array):
    """A uniform step n per example and the noise: (x1 float32, eps, n_B)."""
    rng_n, rng_noise = jax.random.split(rng)
    x1, eps = _noise_like(rng_noise, x1_BHWC)
    return x1, eps, jax.random.randint(rng_n, (x1.shape[0],), 0, self.num_steps)

  def noised(self, x1: jax.Array, eps: jax.Array, n_B: jax.Array) -> jax.Array:
    """x_n = sqrt(abar_n) x1 + sqrt(1 - abar_n) eps."""
    abar = self.path.alpha_bar_at_step(n_B).reshape((-1,) + (1,) * (x1.ndim - 1))
    return jnp.sqrt(abar) * x1 + jnp.sqrt(1.0 - abar) * eps

  def step_of(self, t_B: jax.Array) -> jax.Array:
    """The chain's step nearest to model time t (`paths.t_to_ddpm_step`), within 0..N-1."""
    return jnp.clip(t_to_ddpm_step(t_B, self.num_steps), 0, self.num_steps - 1)

  def step_losses(self, model_fn: Callable, x1: jax.Array, eps: jax.Array, n_B: jax.Array,
                  cond: Any) -> jax.Array:
    """(B,) float32 per-example losses at integer steps n_B with noise eps; the model sees
    t = ddpm_step_to_t(n)."""
    return regression_losses(self, model_fn, self.noised(x1, eps, n_B),
                             ddpm_step_to_t(n_B, self.num_steps), cond, x1, eps)

  def losses_at(self, model_fn: Callable, x1_BHWC: jax.Array, noise_BHWC: jax.Array,
                t_B: jax.Array, cond: Any) -> jax.Array:
    """(B,) per-example losses at the steps nearest to times t_B (`step_of`), noise eps =
    noise_BHWC."""
    x1, eps = _float32(x1_BHWC, noise_BHWC)
    return self.step_losses(model_fn, x1, eps, self.step_of(t_B), cond)

  def loss(self, model_fn: Callable, rng: jax.Array, x1_BHWC: jax.Array,
           cond: Any) -> tuple[jax.Array, dict]:
    x1, eps, n_B = self.draw(rng, x1_BHWC)
    return _averaged(self.step_losses(model_fn, x1, eps, n_B, cond),
                     ddpm_step_to_t(n_B, self.num_steps))


_FIELDS = {kind: {f.name: f.default for f in dataclasses.fields(cls)}
           for kind, cls in (("flow", FlowMatching), ("ddpm", DDPM), ("ddpm_hybrid", DDPM))}
# config.objective's defaults (config.base_config): the fields of every kind, DDPM's chain
# included, so that this section is the one home of the diffusion schedule (the sampler reads
# it through `sampler_fields`). Another kind's field at this value or at its own default counts
# as unset, so `--config.objective.kind=ddpm` works on any config.
CONFIG_DEFAULTS = dict(kind="flow", t_dist="logit_normal", logit_mean=0.0, logit_std=1.0,
                       shift=1.0, prediction=None, num_steps=1000, beta_start=1e-4,
                       beta_end=0.02)


def _choice(prefix, name, value, options):
  if value not in options:
    raise InputError(f"{prefix}.{name}={value!r} is not one of {tuple(options)}")


def _positive(prefix, kw, *names):
  for name in names:
    if not kw[name] > 0:
      raise InputError(f"{prefix}.{name}={kw[name]!r} must be positive")


def make_objective(config, prefix: str = "objective") -> FlowMatching | DDPM:
  """Builds an objective from a ConfigDict or dict with `kind` ('flow' | 'ddpm' |
  'ddpm_hybrid': DDPM plus the learned-variance bound, for learn_sigma models) and the fields
  of that kind (FlowMatching: t_dist, logit_mean, logit_std, shift, prediction; DDPM:
  num_steps, beta_start, beta_end, prediction). A field of the other kind may be present only
  at its default, and prediction=None means the kind's own (velocity / eps), so one base config
  can serve both."""
  fields = dict(config)
  kind = fields.pop("kind", "flow")
  _choice(prefix, "kind", kind, KINDS)
  own = _FIELDS[kind]
  known = set().union(*_FIELDS.values())
  unknown = sorted(set(fields) - known)
  if unknown:
    raise InputError(f"{prefix} has fields {unknown} that no objective takes; known fields: "
                     f"{sorted(known | {'kind'})}")
  for name in sorted(set(fields) - set(own)):
    other = next(k for k in KINDS if name in _FIELDS[k])
    if fields[name] not in (_FIELDS[other][name], CONFIG_DEFAULTS[name]):
      raise InputError(f"{prefix}.{name}={fields[name]!r} only applies to kind={other!r}, "
                       f"but {prefix}.kind={kind!r}: remove it or change the kind")
  kw = {**own, **{name: fields[name] for name in own if name in fields}}
  if kw["prediction"] is None:
    kw["prediction"] = own["prediction"]
  _choice(prefix, "prediction", kw["prediction"], TRAIN_PREDICTIONS)
  if kind == "flow":
    _choice(prefix, "t_dist", kw["t_dist"], timesteps.T_DISTS)
    _positive(prefix, kw, "logit_std", "shift")
    return FlowMatching(**kw)
  _positive(prefix, kw, "num_steps", "beta_start", "beta_end")
  if not kw["beta_start"] <= kw["beta_end"] < 1:
    raise InputError(f"{prefix}.beta_start={kw['beta_start']} and {prefix}.beta_end="
                     f"{kw['beta_end']} need 0 < beta_start <= beta_end < 1")
  if kind == "ddpm_hybrid":
    if kw["prediction"] != "eps":
      raise InputError(f"{prefix}.kind='ddpm_hybrid' trains eps (and the variance): set "
                       f"{prefix}.prediction='eps' or None")
    return DDPMHybrid(**kw)
  return DDPM(**kw)


# The variational-bound term that trains a learned variance (Improved DDPM's hybrid loss, which
# DiT trains with: loss = mse(eps) + L_vb, the mean frozen so that L_vb only moves v).


def normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) per element, in nats."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def approx_standard_normal_cdf(x):
  """Phi(x) with the tanh approximation that Improved DDPM's decoder likelihood uses."""
  return 0.5 * (1.0 + jnp.tanh(jnp.sqrt(2.0 / jnp.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, mean, log_scale):
  """log P(bin of x) for data on 256 levels in [-1, 1] under N(mean, e^(2 log_scale)); the end
  bins extend to -inf / +inf, so the probabilities of the 256 bins sum to 1."""
  inv_std = jnp.exp(-log_scale)
  cdf_plus = approx_standard_normal_cdf(inv_std * (x - mean + 1.0 / 255.0))
  cdf_min = approx_standard_normal_cdf(inv_std * (x - mean - 1.0 / 255.0))
  log = lambda p: jnp.log(jnp.maximum(p, 1e-12))
  return jnp.where(x < -0.999, log(cdf_plus),
                   jnp.where(x > 0.999, log(1.0 - cdf_min), log(cdf_plus - cdf_min)))


def learned_variance_vb(eps, v, x_t, x1, n_B, path: VPPath) -> jax.Array:
  """L_vb in bits per dimension, (B,), for a model's (eps, v) at x_t = x_n on the full chain:
  KL(q(x_{n-1} | x_n, x1) || p(x_{n-1} | x_n)) for n > 0 and the decoder's discretized NLL of
  x1 for n = 0. p has the posterior mean of the (frozen) eps and the log variance
  f log beta_n + (1 - f) log beta~_n, f = (v + 1) / 2, with beta~_0 clipped to beta~_1."""
  abar = np.concatenate([[1.0], paths.alphas_cumprod(path.num_steps, path.beta_start,
                                                      path.beta_end)])  # index n + 1
  post = paths.ddpm_posterior(abar[1:], abar[:-1])  # float64 tables of n = 0 .. N-1
  post_log_var = np.log(np.append(post.variance[1], post.variance[1:]))
  take = lambda table: jnp.asarray(table, jnp.float32)[n_B].reshape((-1,) + (1,) * (x_t.ndim - 1))
  eps = jax.lax.stop_gradient(eps)
  abar_n = take(abar[1:])
  x1_hat = (x_t - jnp.sqrt(1.0 - abar_n) * eps) / jnp.sqrt(abar_n)
  coef_x1, coef_xt = take(post.coef_x1), take(post.coef_xt)
  model_mean = coef_x1 * x1_hat + coef_xt * x_t
  true_mean = coef_x1 * x1 + coef_xt * x_t
  min_log = take(post_log_var)
  model_log_var = paths.mix_log_variance(v, min_log, take(np.log(post.beta)))
  axes = tuple(range(1, x_t.ndim))
  kl = normal_kl(true_mean, min_log, model_mean, model_log_var).mean(axes) / np.log(2.0)
  nll = -discretized_gaussian_log_likelihood(x1, model_mean, 0.5 * model_log_var).mean(axes)
  return jnp.where(n_B == 0, nll / np.log(2.0), kl)


@dataclasses.dataclass(frozen=True)
class DDPMHybrid(DDPM):
  """DDPM with a learned variance, as DiT trains: mse(eps) + L_vb (`learned_variance_vb`).
  The model outputs 2C channels (eps, v). A converted published DiT takes DDPM steps: train it
  through `convert.dit.converted_model_fn`."""

  def sampler_fields(self) -> dict:
    """The chain, and that ancestral steps take the model's learned variance."""
    return {"path": self.path, "learned_variance": True}

  def terms(self, model_fn: Callable, x1: jax.Array, eps: jax.Array, n_B: jax.Array,
            cond: Any) -> tuple[jax.Array, jax.Array]:
    """(mse, vb), each (B,) float32, at integer steps n_B with noise eps."""
    x_t, C = self.noised(x1, eps, n_B), x1.shape[-1]
    out = model_fn(x_t, ddpm_step_to_t(n_B, self.num_steps), cond).astype(jnp.float32)
    if out.shape[-1] != 2 * C:
      raise InputError(f"objective DDPMHybrid needs a learn_sigma model (2C={2 * C} output "
                       f"channels), got {out.shape[-1]}")
    mse = jnp.mean(jnp.square(out[..., :C] - eps), axis=_example_axes(x1))
    return mse, learned_variance_vb(out[..., :C], out[..., C:], x_t, x1, n_B, self.path)

  def step_losses(self, model_fn: Callable, x1: jax.Array, eps: jax.Array, n_B: jax.Array,
                  cond: Any) -> jax.Array:
    """(B,) per-example mse + vb."""
    mse, vb = self.terms(model_fn, x1, eps, n_B, cond)
    return mse + vb

  def loss(self, model_fn: Callable, rng: jax.Array, x1_BHWC: jax.Array,
           cond: Any) -> tuple[jax.Array, dict]:
    x1, eps, n_B = self.draw(rng, x1_BHWC)
    mse, vb = (jnp.mean(term) for term in self.terms(model_fn, x1, eps, n_B, cond))
    t_mean = jnp.mean(ddpm_step_to_t(n_B, self.num_steps))
    return mse + vb, {"loss": mse + vb, "mse": mse, "vb": vb, "t_mean": t_mean}
