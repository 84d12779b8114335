"""On-device samplers: one `lax.scan` over the steps, classifier-free guidance in one call.

    sampler = make_sampler({"method": "heun", "steps": 50, "cfg_scale": 4.0, "shift": 3.0})
    sample = jax.jit(lambda params, rng, x0, y, s: sampler(
        lambda x, t, c: model.apply(params, x, t, c), rng, x0, {"label": y},
        null_cond={"label": jnp.full_like(y, num_classes)}, cfg_scale=s))

Methods and what `model_fn(x_BHWC, t_B, cond)` must predict (first C channels of its output):
  euler, heun   velocity, integrating dx/dt = u(x, t) from t = 0 (noise) to t = 1 (data)
  ddpm, ddim    eps of DDPM's chain (`VPPath`), on steps n = N (1 - t) - 1 of the same grid
Wrap a model trained for another prediction with `paths.convert_model_fn`. Heun evaluates the
velocity at t = 1, where a flow model's is finite but that of an eps model on `VPPath` is not
(sigma' -> -inf): sample eps models with ddim/ddpm (or euler).

Guidance: u = u_null + s (u_cond - u_null), with cond and null_cond concatenated along the
batch so the model runs once per evaluation on 2B examples. `null_cond=None` is the static
switch that turns guidance off (B examples, no doubling); with a `null_cond`, the scale s is a
traced value, so sweeping it does not recompile. A concrete s == 1 skips the doubling too.
Scales are >= 0: s = 0 samples the unconditional model, s = 1 the conditional one without
guidance, s > 1 strengthens the condition.
"""
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.errors import InputError
from dit_jax.flow.paths import (VPPath, ddpm_posterior, ddpm_step_to_t, mix_log_variance,
                                t_to_ddpm_step)
from dit_jax.flow.timesteps import shifted_grid

METHODS = ("euler", "heun", "ddpm", "ddim")
# The time grid of `Sampler`: 'uniform' (shifted by `shift`), or 'respaced', Improved DDPM's
# even respacing of the DDPM chain that keeps both its ends (the published DiT's sampler).
SPACINGS = ("uniform", "respaced")
PredictFn = Callable[[jax.Array, jax.Array], jax.Array]  # (x_BHWC, t scalar) -> (B, H, W, C)


def _concrete_value(x) -> float | None:
  """x as a Python float if it is a concrete scalar; None for tracers and per-example arrays."""
  try:
    return float(x)
  except TypeError:  # includes jax.errors.ConcretizationTypeError
    return None


def uses_guidance(null_cond: Any, cfg_scale) -> bool:
  """Whether sampling runs the doubled batch: a null_cond is given and s is not a concrete 1."""
  scale = _concrete_value(cfg_scale)
  if null_cond is None:
    if scale is not None and scale != 1.0:
      raise InputError(f"cfg_scale={scale} needs null_cond (the unconditional input, e.g. "
                       "{'label': full(B, num_classes)} for DiT), or use cfg_scale=1")
    return False
  return scale is None or scale != 1.0


def _check_null_cond(cond, null_cond, batch):
  if jax.tree.structure(cond) != jax.tree.structure(null_cond):
    raise InputError(f"null_cond must have the structure of cond: got {jax.tree.structure(cond)}"
                     f" and {jax.tree.structure(null_cond)}")
  for c, u in zip(jax.tree.leaves(cond), jax.tree.leaves(null_cond)):
    if jnp.shape(c) != jnp.shape(u) or jnp.shape(c)[:1] != (batch,):
      raise InputError(f"cond and null_cond leaves must both be shaped (B={batch}, ...), got "
                       f"{jnp.shape(c)} and {jnp.shape(u)}")


def guided_fn(model_fn: Callable, cond: Any, null_cond: Any = None,
              cfg_scale: float | jax.Array = 1.0, *, all_channels: bool = False,
              guide_channels: int | None = None) -> PredictFn:
  """model_fn -> f(x_BHWC, t) giving the (guided) prediction in float32: its C channels, or
  with `all_channels` every output channel (eps and the learned variance v).

  cfg_scale is a scalar or one scale per example (B,). The first `guide_channels` (default
  all C of x) are guided, the rest come from the conditional branch: guide_channels=3 on
  4-channel latents reproduces the original DiT sampler, which guided only three channels.
  """
  guided = uses_guidance(null_cond, cfg_scale)

  def fn(x_BHWC, t):
    B, C = x_BHWC.shape[0], x_BHWC.shape[-1]
    k = C if guide_channels is None else guide_channels
    if not 0 < k <= C:
      raise InputError(f"guide_channels={guide_channels} must be in 1..{C} (x's channels)")
    keep = slice(None) if all_channels else slice(0, C)
    t_B = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (B,))
    if not guided:
      return model_fn(x_BHWC, t_B, cond)[..., keep].astype(jnp.float32)
    _check_null_cond(cond, null_cond, B)
    both = jax.tree.map(lambda c, u: jnp.concatenate([c, u]), cond, null_cond)
    out = model_fn(jnp.concatenate([x_BHWC, x_BHWC]), jnp.concatenate([t_B, t_B]), both)
    out_cond, out_null = jnp.split(out[..., keep].astype(jnp.float32), 2)
    scale = jnp.asarray(cfg_scale, jnp.float32)
    scale = scale.reshape(scale.shape + (1,) * (x_BHWC.ndim - scale.ndim))  # () or (B,)
    mixed = out_null[..., :k] + scale * (out_cond[..., :k] - out_null[..., :k])
    return jnp.concatenate([mixed, out_cond[..., k:]], axis=-1)

  return fn


def euler_step(fn: PredictFn, x: jax.Array, t: jax.Array, t_next: jax.Array) -> jax.Array:
  """x + (t_next - t) u(x, t): first order, one evaluation."""
  return x + (t_next - t) * fn(x, t)


def heun_step(fn: PredictFn, x: jax.Array, t: jax.Array, t_next: jax.Array) -> jax.Array:
  """Euler predictor, trapezoidal corrector: second order, two evaluations."""
  h = t_next - t
  u = fn(x, t)
  return x + 0.5 * h * (u + fn(x + h * u, t_next))


ODE_STEPS = {"euler": euler_step, "heun": heun_step}


def sample_ode(model_fn: Callable, x0_BHWC: jax.Array, cond: Any, grid_T: jax.Array, *,
               method: str = "euler", null_cond: Any = None,
               cfg_scale: float | jax.Array = 1.0,
               guide_channels: int | None = None) -> jax.Array:
  """Integrates the velocity of model_fn over the times grid_T (t_0 = 0 noise ... 1 data)."""
  if method not in ODE_STEPS:
    raise InputError(f"method={method!r} is not an ODE method {tuple(ODE_STEPS)}")
  fn = guided_fn(model_fn, cond, null_cond, cfg_scale, guide_channels=guide_channels)
  step = ODE_STEPS[method]

  def body(x, ts):
    return step(fn, x, *ts), None

  grid_T = jnp.asarray(grid_T, jnp.float32)
  x, _ = jax.lax.scan(body, jnp.asarray(x0_BHWC, jnp.float32), (grid_T[:-1], grid_T[1:]))
  return x


def _x1_hat(eps, x, abar_n):
  return (x - jnp.sqrt(1.0 - abar_n) * eps) / jnp.sqrt(abar_n)


def ddim_step(eps, x, abar_n, abar_m, z, eta=0.0):
  """DDIM (Song et al. 2021) from step n to an earlier step m; eta=1 is DDPM's posterior."""
  var = eta ** 2 * ddpm_posterior(abar_n, abar_m).variance
  direction = jnp.sqrt(jnp.maximum(1.0 - abar_m - var, 0.0))
  return jnp.sqrt(abar_m) * _x1_hat(eps, x, abar_n) + direction * eps + jnp.sqrt(var) * z


def ddpm_step(eps, x, abar_n, abar_m, z):
  """Ancestral step x_n -> x_m ~ q(x_m | x_n, x1_hat) with the posterior ("fixed small")
  variance; for m = n - 1 this is Ho et al.'s update, for m < n - 1 its respaced form."""
  post = ddpm_posterior(abar_n, abar_m)
  mean = post.coef_x1 * _x1_hat(eps, x, abar_n) + post.coef_xt * x
  return mean + jnp.sqrt(post.variance) * z


def sample_ddpm(model_fn: Callable, rng: jax.Array, x0_BHWC: jax.Array, cond: Any,
                grid_T: jax.Array, *, path: VPPath = VPPath(), eta: float | None = None,
                null_cond: Any = None, cfg_scale: float | jax.Array = 1.0,
                learned_variance: bool = False, guide_channels: int | None = None) -> jax.Array:
  """Ancestral DDPM (eta=None) or DDIM(eta) with an eps model, over the integer steps
  n = N (1 - t) - 1 of grid_T (N-1 at t = 0, -1 = clean data at t = 1).

  learned_variance: the model outputs (eps, v), 2C channels, and ancestral steps take the
  learned variance (`ddpm_learned_step`, as the published DiT samples; `respaced_grid(250)`
  gives the paper's 250 steps); DDIM ignores v. See `guided_fn` for guide_channels.
  """
  fn = guided_fn(model_fn, cond, null_cond, cfg_scale, all_channels=learned_variance,
                 guide_channels=guide_channels)
  table = path.alpha_bar_table()
  n_T = t_to_ddpm_step(grid_T, path.num_steps)
  C = x0_BHWC.shape[-1]
  deterministic = eta is not None and _concrete_value(eta) == 0.0

  def body(x, inputs):
    n, m, key = inputs
    out = fn(x, ddpm_step_to_t(n, path.num_steps))
    if learned_variance and out.shape[-1] != 2 * C:
      raise InputError(f"learned-variance sampling needs a learn_sigma model with 2C={2 * C} "
                       f"output channels, got {out.shape[-1]}: sample eps-only models without "
                       "learned_variance")
    eps = out[..., :C]
    abar_n, abar_m = table[n + 1], table[m + 1]
    z = jnp.zeros_like(x) if deterministic else jax.random.normal(key, x.shape, jnp.float32)
    if eta is not None:
      return ddim_step(eps, x, abar_n, abar_m, z, eta), None
    if learned_variance:
      return ddpm_learned_step(eps, out[..., C:], x, abar_n, abar_m, z), None
    return ddpm_step(eps, x, abar_n, abar_m, z), None

  # One key per step pair (n_T[i], n_T[i+1]); placeholders when the steps draw no noise.
  if deterministic:
    keys = jnp.zeros(n_T.shape[0] - 1)  # DDIM(eta=0) needs no rng
  elif rng is None:
    raise InputError("stochastic sampling (ddpm, or ddim with eta > 0) needs an rng key")
  else:
    keys = jax.random.split(rng, n_T.shape[0] - 1)
  x, _ = jax.lax.scan(body, jnp.asarray(x0_BHWC, jnp.float32), (n_T[:-1], n_T[1:], keys))
  return x


@dataclasses.dataclass(frozen=True)
class Sampler:
  """A configured sampler: `sampler(model_fn, rng, x0_BHWC, cond, null_cond, cfg_scale)`.

  Hashable (plain fields), so it can be closed over or passed as a static argument to jit.
  The DDPM chain (`path`) and whether the model learned its variance come from the objective
  the model was trained with, never from the sample config (see `make_sampler`).
  """
  method: str = "euler"       # one of METHODS
  steps: int = 50             # steps of the time grid (model evaluations: x2 for heun)
  shift: float = 1.0          # SD3/FLUX shift of the grid (1: uniform)
  cfg_scale: float = 1.0      # default guidance scale when the call gives none
  eta: float = 0.0            # ddim: 0 deterministic, 1 DDPM's posterior variance
  path: VPPath = VPPath()     # ddpm/ddim: the chain the eps model was trained on
  learned_variance: bool = False  # ddpm/ddim: the model outputs (eps, v) (objective ddpm_hybrid)
  guide_channels: int = 0     # guide only the first k channels (`guided_fn`); 0: all
  spacing: str = "uniform"    # one of SPACINGS; 'respaced': ddpm/ddim only

  def grid(self) -> jax.Array:
    """(steps + 1,) times from 0 (noise) to 1 (data)."""
    if self.spacing == "respaced":
      return respaced_grid(self.steps, self.path.num_steps)
    return shifted_grid(self.steps, self.shift)

  @property
  def evaluations(self) -> int:
    """Model evaluations per sample: one per step, two for Heun's corrector."""
    return self.steps * (2 if self.method == "heun" else 1)

  def check(self, prefix: str = "sample") -> "Sampler":
    """Raises ValueError naming the field (as `prefix.field`) for an invalid setting."""
    if self.method not in METHODS:
      raise InputError(f"{prefix}.method={self.method!r} is not one of {METHODS}")
    if not isinstance(self.steps, (int, np.integer)) or self.steps < 1:
      raise InputError(f"{prefix}.steps={self.steps!r} must be a positive integer")
    if not self.shift > 0:
      raise InputError(f"{prefix}.shift={self.shift!r} must be positive")
    if self.eta != 0.0 and self.method != "ddim":
      raise InputError(f"{prefix}.eta={self.eta!r} only applies to method='ddim'")
    if not 0.0 <= self.eta <= 1.0:
      raise InputError(f"{prefix}.eta={self.eta!r} must be in [0, 1] (0: DDIM, 1: DDPM noise)")
    if self.spacing not in SPACINGS:
      raise InputError(f"{prefix}.spacing={self.spacing!r} is not one of {SPACINGS}")
    if self.spacing == "respaced" and self.method not in ("ddpm", "ddim"):
      raise InputError(f"{prefix}.spacing='respaced' respaces the DDPM chain: it needs "
                       f"method 'ddpm' or 'ddim', not {self.method!r}")
    if not isinstance(self.guide_channels, (int, np.integer)) or self.guide_channels < 0:
      raise InputError(f"{prefix}.guide_channels={self.guide_channels!r} must be an integer "
                       ">= 0 (0: guide every channel)")
    if self.method in ("ddpm", "ddim") and self.steps > self.path.num_steps:
      raise InputError(f"{prefix}.steps={self.steps} exceeds the {self.path.num_steps} steps of "
                       f"the DDPM chain (objective.num_steps): use at most "
                       f"{self.path.num_steps}")
    return self

  def __call__(self, model_fn: Callable, rng: jax.Array, x0_BHWC: jax.Array, cond: Any,
               null_cond: Any = None, cfg_scale: float | jax.Array | None = None) -> jax.Array:
    """x0 ~ N(0, I) of shape (B, H, W, C) -> samples; rng feeds ddpm/ddim(eta > 0) noise only
    (None is fine otherwise)."""
    self.check()
    scale = self.cfg_scale if cfg_scale is None else cfg_scale
    kw = dict(null_cond=null_cond, cfg_scale=scale, guide_channels=self.guide_channels or None)
    if self.method in ODE_STEPS:
      return sample_ode(model_fn, x0_BHWC, cond, self.grid(), method=self.method, **kw)
    eta = None if self.method == "ddpm" else self.eta
    return sample_ddpm(model_fn, rng, x0_BHWC, cond, self.grid(), path=self.path, eta=eta,
                       learned_variance=self.learned_variance, **kw)


def make_sampler(config, prefix: str = "sample", *, path: VPPath = VPPath(),
                 learned_variance: bool = False) -> Sampler:
  """Builds a Sampler from a ConfigDict or dict (method, steps, cfg_scale, shift, eta,
  guide_channels, spacing) and what the training objective fixes: the DDPM chain `path` and
  `learned_variance` (use `objective.sampler_fields()`). The schedule lives in
  config.objective only."""
  fields = dict(config)
  known = {f.name for f in dataclasses.fields(Sampler)} - {"path", "learned_variance"}
  schedule = sorted(set(fields) & ({f.name for f in dataclasses.fields(VPPath)}
                                   | {"path", "learned_variance"}))
  if schedule:
    raise InputError(f"{prefix} has fields {schedule}: the DDPM chain is defined once, in "
                     "config.objective (num_steps, beta_start, beta_end, kind='ddpm_hybrid' "
                     "for a learned variance); remove them here")
  unknown = sorted(set(fields) - known)
  if unknown:
    raise InputError(f"{prefix} has fields {unknown} that the sampler does not take; known "
                     f"fields: {sorted(known)}")
  return Sampler(path=path, learned_variance=learned_variance, **fields).check(prefix)


def sampler_for(config, objective, prefix: str = "sample") -> Sampler:
  """make_sampler for a model trained with `objective` (flow.make_objective): its DDPM chain
  and learned variance, and only the methods that fit it."""
  chain = objective.sampler_fields()
  sampler = make_sampler(config, prefix, **chain)
  if "path" in chain and sampler.method == "heun":
    raise InputError(f"{prefix}.method='heun' evaluates t = 1, where a DDPM model's velocity is "
                     "infinite: use 'ddim', 'ddpm' or 'euler' with objective.kind='ddpm'")
  if "path" not in chain and sampler.method in ("ddpm", "ddim"):
    raise InputError(f"{prefix}.method={sampler.method!r} walks a DDPM chain, which a "
                     "flow-matching model (objective.kind='flow') was not trained on: use "
                     "'euler' or 'heun'")
  return sampler


# Learned-variance DDPM (Improved DDPM, Nichol & Dhariwal 2021), as the published DiT samples.


def respaced_steps(steps: int, num_steps: int = 1000) -> np.ndarray:
  """The `steps` integer DDPM steps of Improved DDPM's even respacing, noisiest first, then -1
  (clean data): round(i (N-1) / (steps-1)) for i < steps, so both ends 0 and N-1 are kept
  (250 of 1000: 999, 995, ..., 4, 0, -1). Not our uniform grid, which skips step 0."""
  if not 1 <= steps <= num_steps:
    raise InputError(f"steps={steps} must be in 1..{num_steps} (the DDPM chain's num_steps)")
  stride = (num_steps - 1) / (steps - 1) if steps > 1 else 0.0
  taken, position = set(), 0.0
  for _ in range(steps):  # accumulated in float64 as the reference respacing does
    taken.add(round(position))
    position += stride
  return np.array(sorted(taken, reverse=True) + [-1], np.int32)


def respaced_grid(steps: int, num_steps: int = 1000) -> jax.Array:
  """Times t = 1 - (n + 1) / N of `respaced_steps`, for `sample_ddpm`."""
  return ddpm_step_to_t(respaced_steps(steps, num_steps), num_steps)


def learned_log_variance(v, abar_n, abar_m):
  """log variance of the step n -> m from the model's v in [-1, 1] (`paths.mix_log_variance`
  of the respaced beta and the posterior variance beta~). beta~ is 0 at the last step
  (m = -1, abar_m = 1), where no noise is added; it is clipped there to stay finite."""
  post = ddpm_posterior(abar_n, abar_m)
  return mix_log_variance(v, jnp.log(jnp.maximum(post.variance, 1e-20)), jnp.log(post.beta))


def ddpm_learned_step(eps, v, x, abar_n, abar_m, z):
  """Ancestral step with the posterior mean of `ddpm_step` and the learned variance."""
  mean = ddpm_step(eps, x, abar_n, abar_m, jnp.zeros_like(x))
  std = jnp.exp(0.5 * learned_log_variance(v, abar_n, abar_m))
  return mean + jnp.where(abar_m < 1.0, std, 0.0) * z
