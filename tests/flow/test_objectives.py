import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dit_jax.flow.objectives import DDPM, FlowMatching, make_objective
from dit_jax.flow.paths import LinearPath, VPPath, alphas_cumprod

SHAPE = (4096, 4, 4, 1)  # 4096 times, 16 values each


def data(gaussian, seed=0):
  x = np.random.default_rng(seed).normal(gaussian.mu, gaussian.s, size=SHAPE)
  return jnp.asarray(x, jnp.float32)


def conditional_variance(p, q, a, b, s):
  """Var[p x1 + q eps | x] for x = a x1 + b eps, x1 ~ N(mu, s^2), eps ~ N(0, 1)."""
  V = a ** 2 * s ** 2 + b ** 2
  return p ** 2 * s ** 2 + q ** 2 - (p * a * s ** 2 + q * b) ** 2 / V


def losses(objective, model_fns, x1, seed=1):
  """Losses of several model_fns on the same draw, in one compiled program."""
  return jax.jit(lambda r, x: [objective.loss(f, r, x, None) for f in model_fns])(
      jax.random.PRNGKey(seed), x1)


def test_flow_loss_at_exact_velocity_is_the_conditional_variance(gaussian):
  """min E|v - (x1 - x0)|^2 = E_t Var[x1 - x0 | x_t], reached only by the exact field."""
  t = (np.arange(200_000) + 0.5) / 200_000
  minimum = conditional_variance(1.0, -1.0, t, 1 - t, gaussian.s).mean()
  exact = gaussian.model_fn(LinearPath(), "velocity")
  perturbed = lambda x, t, c: exact(x, t, c) + 0.3
  (loss, metrics), (loss_perturbed, _) = losses(FlowMatching(), [exact, perturbed],
                                                data(gaussian))
  assert loss.dtype == jnp.float32 and loss.shape == ()
  assert float(loss) == pytest.approx(minimum, rel=0.03)
  assert float(metrics["t_mean"]) == pytest.approx(0.5, abs=0.02)
  assert float(loss_perturbed - loss) == pytest.approx(0.3 ** 2, abs=0.01)


@pytest.mark.parametrize("prediction,p,q", [("eps", 0.0, 1.0), ("x1", 1.0, 0.0)])
def test_flow_loss_other_predictions_under_logit_normal(gaussian, prediction, p, q):
  """Same minimum for eps / x1 targets, averaged over logit-normal times (Gauss-Hermite)."""
  z, w = np.polynomial.hermite_e.hermegauss(80)
  t = 1 / (1 + np.exp(-(0.5 + 0.8 * z)))
  minimum = (w * conditional_variance(p, q, t, 1 - t, gaussian.s)).sum() / w.sum()
  objective = FlowMatching("logit_normal", 0.5, 0.8, prediction=prediction)
  [(loss, _)] = losses(objective, [gaussian.model_fn(LinearPath(), prediction)], data(gaussian))
  assert float(loss) == pytest.approx(minimum, rel=0.03)


def test_ddpm_loss_at_exact_eps_is_the_conditional_variance(gaussian):
  abar = alphas_cumprod()
  minimum = conditional_variance(0.0, 1.0, np.sqrt(abar), np.sqrt(1 - abar), gaussian.s).mean()
  [(loss, metrics)] = losses(DDPM(), [gaussian.model_fn(VPPath(), "eps")], data(gaussian))
  assert float(loss) == pytest.approx(minimum, rel=0.03)
  assert float(metrics["t_mean"]) == pytest.approx(0.5, abs=0.02)


def test_oracle_that_knows_the_data_has_zero_loss(gaussian):
  """Recovering the noise from (x_t, t, x1) with our own formulas checks x_t, t and the target."""
  x1 = data(gaussian)[:64]
  abar_table = jnp.asarray(alphas_cumprod(), jnp.float32)

  def flow_oracle(x_t, t_B, cond):
    t = t_B[:, None, None, None]
    return x1 - (x_t - t * x1) / (1 - t)  # x1 - x0

  def ddpm_oracle(x_t, t_B, cond):
    n = jnp.round(1000 * (1 - t_B)).astype(jnp.int32) - 1
    abar = abar_table[n][:, None, None, None]
    return (x_t - jnp.sqrt(abar) * x1) / jnp.sqrt(1 - abar)

  def run(rng):
    t_B = []
    spy = lambda x, t, c: t_B.append(t) or ddpm_oracle(x, t, c)
    flow, _ = FlowMatching(shift=3.0).loss(flow_oracle, rng, x1, None)
    ddpm, _ = DDPM().loss(spy, rng, x1, None)
    return flow, ddpm, t_B[0]

  flow, ddpm, t_B = jax.jit(run)(jax.random.PRNGKey(0))
  assert float(flow) < 1e-6 and float(ddpm) < 1e-8
  steps = 1000 * np.asarray(t_B)
  np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
  assert steps.min() >= 0 and steps.max() <= 999


def test_variance_channels_are_ignored_and_losses_are_float32(gaussian):
  exact = gaussian.model_fn(LinearPath(), "velocity")
  with_variance = lambda x, t, c: jnp.concatenate([exact(x, t, c), 100 + x], axis=-1)
  bfloat16 = lambda x, t, c: exact(x, t, c).astype(jnp.bfloat16)
  x1 = data(gaussian)[:32]

  def run(rng):
    return [objective.loss(f, rng, x1, None)[0] for objective in (FlowMatching(), DDPM())
            for f in (exact, with_variance, bfloat16)]

  flow, flow_variance, flow_bf16, ddpm, ddpm_variance, ddpm_bf16 = jax.jit(run)(
      jax.random.PRNGKey(3))
  assert float(flow) == float(flow_variance) and float(ddpm) == float(ddpm_variance)
  assert flow_bf16.dtype == ddpm_bf16.dtype == jnp.float32
  assert float(flow_bf16) == pytest.approx(float(flow), rel=0.05)


def test_losses_at_a_steps_time_are_the_training_losses_of_that_step(gaussian):
  """DDPM's `losses_at` (what loss by noise level evaluates) maps t back to the step whose time
  it is, so at the drawn steps and noise it gives the training loss, learned variance too."""
  from dit_jax.flow.objectives import DDPMHybrid
  from dit_jax.flow.paths import ddpm_step_to_t
  steps = jnp.arange(1000)
  assert (DDPM().step_of(ddpm_step_to_t(steps)) == steps).all()
  assert DDPM().step_of(jnp.array([0.0, 1.0])).tolist() == [999, 0]  # ends clipped to the chain
  x1 = data(gaussian)[:256]
  eps_fn = gaussian.model_fn(VPPath(), "eps")
  with_variance = lambda x, t, c: jnp.concatenate([eps_fn(x, t, c), jnp.tanh(x)], axis=-1)
  for objective, fn in ((DDPM(), eps_fn), (DDPMHybrid(), with_variance)):
    rng = jax.random.PRNGKey(5)
    loss, _ = objective.loss(fn, rng, x1, None)
    x1_f32, eps, n_B = objective.draw(rng, x1)
    per_example = objective.losses_at(fn, x1_f32, eps, ddpm_step_to_t(n_B), None)
    assert per_example.shape == (256,)
    assert float(jnp.mean(per_example)) == pytest.approx(float(loss), rel=1e-6)


def test_make_objective_from_dict_and_config_dict():
  assert make_objective({"kind": "flow"}) == FlowMatching()
  config = ml_collections.ConfigDict(dict(kind="flow", t_dist="logit_normal", logit_mean=0.0,
                                          logit_std=1.0, shift=3.0, prediction=None,
                                          num_steps=1000))
  assert make_objective(config) == FlowMatching("logit_normal", 0.0, 1.0, 3.0, "velocity")
  config.kind = "ddpm"
  config.t_dist = "uniform"
  config.shift = 1.0
  assert make_objective(config) == DDPM()
  assert make_objective({"kind": "ddpm", "num_steps": 500}).path == VPPath(500)


@pytest.mark.parametrize("fields,message", [
    ({"kind": "foo"}, r"objective.kind='foo' is not one of \('flow', 'ddpm', 'ddpm_hybrid'\)"),
    ({"t_dist": "beta"}, r"objective.t_dist='beta' is not one of"),
    ({"prediction": "score"}, r"objective.prediction='score' is not one of"),
    ({"logit_std": 0.0}, r"objective.logit_std=0.0 must be positive"),
    ({"shift": -1.0}, r"objective.shift=-1.0 must be positive"),
    ({"lr": 1.0}, r"fields \['lr'\] that no objective takes"),
    ({"kind": "ddpm", "shift": 3.0}, r"objective.shift=3.0 only applies to kind='flow'"),
    ({"kind": "flow", "num_steps": 10}, r"objective.num_steps=10 only applies to kind='ddpm'"),
    ({"kind": "ddpm", "beta_start": 0.1, "beta_end": 0.01}, r"beta_start <= beta_end"),
])
def test_make_objective_errors_name_the_field(fields, message):
  with pytest.raises(ValueError, match=message):
    make_objective(fields)


def test_ddpm_hybrid_adds_the_variance_bound_to_the_eps_loss():
  """kind='ddpm_hybrid' = DDPM's eps loss (same numbers) + L_vb, which is >= 0."""
  from dit_jax.flow.objectives import DDPMHybrid
  hybrid = make_objective({"kind": "ddpm_hybrid"})
  assert isinstance(hybrid, DDPMHybrid) and hybrid.prediction == "eps"
  x1 = jax.random.normal(jax.random.PRNGKey(0), (16, 4, 4, 2))

  def model(x, t, cond):  # a crude eps guess and a mid-range variance
    return jnp.concatenate([0.5 * x, jnp.zeros_like(x)], axis=-1)

  loss, aux = hybrid.loss(model, jax.random.PRNGKey(1), x1, None)
  assert float(aux["vb"]) > 0 and np.isclose(float(loss), float(aux["mse"] + aux["vb"]))
  with pytest.raises(ValueError, match="learn_sigma model"):
    hybrid.loss(lambda x, t, c: x, jax.random.PRNGKey(1), x1, None)
  with pytest.raises(ValueError, match="prediction='eps'"):
    make_objective({"kind": "ddpm_hybrid", "prediction": "velocity"})
