import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dit_jax.flow.paths import LinearPath, VPPath, convert_model_fn
from dit_jax.flow.samplers import (Sampler, ddim_step, ddpm_step, guided_fn, make_sampler,
                                   respaced_grid, sample_ddpm, sample_ode, uses_guidance)
from dit_jax.flow.timesteps import shifted_grid, uniform_grid

LINEAR = LinearPath()
MEANS = np.array([-1.0, 0.5, 2.0, 0.0], np.float32)  # per label; label 3 is the null class


def noise(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def labelled_velocity(gaussian, calls=None):
  """Exact velocity for data N(MEANS[label], s^2): a conditional analytic model."""
  def model_fn(x, t, cond):
    if calls is not None:
      calls.append(x.shape[0])
    mu = jnp.asarray(MEANS)[cond["label"]][:, None, None, None]
    return gaussian.exact("velocity", x, LINEAR.coefficients(t), mu=mu)
  return model_fn


def python_loop(velocity, x, grid, method):
  """Reference integrator, one Python iteration per step."""
  grid = np.asarray(grid)
  for t, t_next in zip(grid[:-1], grid[1:]):
    h = t_next - t
    u = velocity(x, t)
    if method == "euler":
      x = x + h * u
    else:
      x = x + 0.5 * h * (u + velocity(x + h * u, t_next))
  return x


def assert_moments(x, x0, gaussian, rel):
  """Deterministic samplers map x0 affinely: compare std(x) / std(x0) to s, free of sampling
  noise; the mean allows for the noise mean times s."""
  assert float(x.std() / x0.std()) == pytest.approx(gaussian.s, rel=rel)
  assert float(x.mean()) == pytest.approx(gaussian.mu, abs=0.01)


@pytest.mark.parametrize("method,steps", [("euler", 400), ("heun", 20)])
def test_ode_transports_noise_to_the_data_distribution(gaussian, method, steps):
  x0 = noise((4096, 2, 2, 1))
  x = Sampler(method, steps)(gaussian.model_fn(LINEAR, "velocity"), None, x0, None)
  assert_moments(x, x0, gaussian, rel=0.01)


def test_convergence_orders(gaussian):
  """Error at t = 1 against the exact flow map mu + s x0: slope -1 for Euler, -2 for Heun."""
  x0 = noise((64, 2, 2, 1))
  model_fn = gaussian.model_fn(LINEAR, "velocity")
  steps = np.array([16, 32, 64, 128])
  for method, order in (("euler", 1.0), ("heun", 2.0)):
    errors = [float(jnp.abs(sample_ode(model_fn, x0, None, uniform_grid(int(n)), method=method)
                            - gaussian.flow_map(x0)).max()) for n in steps]
    slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert slope == pytest.approx(-order, abs=0.15), (method, errors)


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_scan_equals_python_loop(gaussian, method):
  x0 = noise((3, 4, 4, 2))
  grid = shifted_grid(7, 3.0)
  model_fn = gaussian.model_fn(LINEAR, "velocity")
  ours = jax.jit(lambda x: sample_ode(model_fn, x, None, grid, method=method))(x0)
  velocity = lambda x, t: model_fn(x, jnp.full((x.shape[0],), t), None)
  np.testing.assert_allclose(ours, python_loop(velocity, x0, grid, method), rtol=1e-5, atol=1e-5)


def test_guidance_is_one_doubled_call_combined_by_hand(gaussian):
  calls = []
  model_fn = labelled_velocity(gaussian, calls)
  x, t = noise((3, 2, 2, 1)), jnp.float32(0.4)
  cond, null = {"label": jnp.array([0, 1, 2])}, {"label": jnp.full((3,), 3)}
  guided = guided_fn(model_fn, cond, null, 2.5)(x, t)
  assert calls == [6]  # one call, conditional and null stacked along the batch
  t_B = jnp.full((3,), t)
  by_hand = model_fn(x, t_B, null) + 2.5 * (model_fn(x, t_B, cond) - model_fn(x, t_B, null))
  np.testing.assert_allclose(guided, by_hand, rtol=1e-6, atol=1e-6)
  scales = jnp.array([1.0, 2.5, 4.0])  # one scale per example
  per_example = guided_fn(model_fn, cond, null, scales)(x, t)
  np.testing.assert_allclose(per_example[1], guided[1], rtol=1e-6)
  np.testing.assert_allclose(per_example[0], model_fn(x, t_B, cond)[0], rtol=1e-6, atol=1e-6)


def test_guided_sampler_equals_loop_with_hand_combined_velocity(gaussian):
  model_fn = labelled_velocity(gaussian)
  x0 = noise((3, 2, 2, 1))
  cond, null = {"label": jnp.array([0, 1, 2])}, {"label": jnp.full((3,), 3)}
  ours = Sampler("heun", 6, shift=2.0)(model_fn, None, x0, cond, null_cond=null, cfg_scale=3.0)

  def velocity(x, t):
    t_B = jnp.full((3,), t)
    u_null = model_fn(x, t_B, null)
    return u_null + 3.0 * (model_fn(x, t_B, cond) - u_null)

  expected = python_loop(velocity, x0, shifted_grid(6, 2.0), "heun")
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


def test_scale_is_traced_and_scale_one_skips_the_doubled_batch(gaussian):
  calls, traces = [], []
  model_fn = labelled_velocity(gaussian, calls)
  sampler = Sampler("euler", 4)
  cond, null = {"label": jnp.array([0, 1])}, {"label": jnp.full((2,), 3)}

  @jax.jit
  def sample(x0, scale):
    traces.append(1)
    return sampler(model_fn, None, x0, cond, null_cond=null, cfg_scale=scale)

  x0 = noise((2, 2, 2, 1))
  a, b = sample(x0, 1.0), sample(x0, 4.0)
  assert len(traces) == 1 and calls == [4]
  np.testing.assert_allclose(a, sampler(model_fn, None, x0, cond), rtol=1e-6)  # s=1: no guidance
  assert not np.allclose(a, b)
  calls.clear()
  sampler(model_fn, None, x0, cond, null_cond=null, cfg_scale=1.0)
  assert calls == [2]  # a concrete scale of 1 runs the plain batch
  assert not uses_guidance(None, 1.0) and uses_guidance(null, 1.5)


def test_guidance_errors():
  with pytest.raises(ValueError, match="cfg_scale=4.0 needs null_cond"):
    uses_guidance(None, 4.0)
  fn = guided_fn(lambda x, t, c: x, {"label": jnp.zeros(2, jnp.int32)},
                 {"text": jnp.zeros(2, jnp.int32)}, 2.0)
  with pytest.raises(ValueError, match="null_cond must have the structure of cond"):
    fn(jnp.zeros((2, 2, 2, 1)), 0.5)
  fn = guided_fn(lambda x, t, c: x, {"label": jnp.zeros(2, jnp.int32)},
                 {"label": jnp.zeros(1, jnp.int32)}, 2.0)
  with pytest.raises(ValueError, match=r"shaped \(B=2, ...\)"):
    fn(jnp.zeros((2, 2, 2, 1)), 0.5)


def test_learned_variance_channels_are_ignored(gaussian):
  model_fn = gaussian.model_fn(LINEAR, "velocity")
  with_variance = lambda x, t, c: jnp.concatenate([model_fn(x, t, c), x * 9.0], axis=-1)
  x0 = noise((2, 2, 2, 3))
  sampler = Sampler("heun", 5)
  np.testing.assert_array_equal(sampler(with_variance, None, x0, None),
                                sampler(model_fn, None, x0, None))


def exact_eps(gaussian, path=VPPath()):
  return gaussian.model_fn(path, "eps")


def test_ddim_with_exact_eps_lands_on_the_data(gaussian):
  x0 = noise((4096, 2, 2, 1))
  sampler = make_sampler({"method": "ddim", "steps": 500, "eta": 0.0})
  x = jax.jit(lambda x: sampler(exact_eps(gaussian), None, x, None))(x0)
  assert_moments(x, x0, gaussian, rel=0.015)
  with pytest.raises(ValueError, match="needs an rng key"):
    make_sampler({"method": "ddpm", "steps": 2})(exact_eps(gaussian), None, x0, None)


def test_ddpm_ancestral_with_exact_eps_lands_on_the_data(gaussian):
  x0 = noise((4096, 2, 2, 1))
  sampler = make_sampler({"method": "ddpm", "steps": 1000})
  x = jax.jit(lambda r, x: sampler(exact_eps(gaussian), r, x, None))(jax.random.PRNGKey(0), x0)
  assert float(x.mean()) == pytest.approx(gaussian.mu, abs=0.01)
  assert float(x.std()) == pytest.approx(gaussian.s, rel=0.025)


def test_ancestral_step_is_ddim_with_eta_one():
  """DDPM's posterior q(x_m | x_n, x1_hat) is DDIM's family at eta = 1, for any m < n."""
  rng = np.random.default_rng(4)
  x, eps, z = rng.normal(size=(3, 5, 2, 2, 1)).astype(np.float32)
  for abar_n, abar_m in [(0.3, 0.31), (0.01, 0.5), (0.9, 1.0)]:
    np.testing.assert_allclose(ddpm_step(eps, x, abar_n, abar_m, z),
                               ddim_step(eps, x, abar_n, abar_m, z, eta=1.0), rtol=1e-5,
                               atol=1e-5)


def test_ddpm_on_the_full_chain_is_ho_et_al_algorithm_2(gaussian):
  path = VPPath(num_steps=40)
  x0, rng, eps_fn = noise((2, 2, 2, 1)), jax.random.PRNGKey(5), exact_eps(gaussian, path)
  ours = jax.jit(lambda: sample_ddpm(eps_fn, rng, x0, None, uniform_grid(40), path=path))()
  betas = np.linspace(1e-4, 0.02, 40)
  abar = np.cumprod(1 - betas)
  zs = jax.vmap(lambda k: jax.random.normal(k, x0.shape))(jax.random.split(rng, 40))
  x = np.asarray(x0, np.float64)
  for i, n in enumerate(range(39, -1, -1)):
    V = abar[n] * gaussian.s ** 2 + 1 - abar[n]
    eps = np.sqrt(1 - abar[n]) / V * (x - np.sqrt(abar[n]) * gaussian.mu)  # exact, in numpy
    abar_prev = abar[n - 1] if n > 0 else 1.0
    var = (1 - abar_prev) / (1 - abar[n]) * betas[n]
    x = (x - betas[n] / np.sqrt(1 - abar[n]) * eps) / np.sqrt(1 - betas[n])
    x = x + np.sqrt(var) * np.asarray(zs[i])
  np.testing.assert_allclose(ours, x, rtol=1e-3, atol=1e-3)


def test_eps_model_through_the_probability_flow_ode(gaussian):
  """An eps model of the DDPM chain, converted to velocity, sampled by Euler."""
  velocity_fn = convert_model_fn(exact_eps(gaussian), VPPath(), "eps", "velocity")
  x = Sampler("euler", 200)(velocity_fn, None, noise((4096, 2, 2, 1)), None)
  assert float(x.mean()) == pytest.approx(gaussian.mu, abs=0.02)
  assert float(x.std()) == pytest.approx(gaussian.s, rel=0.03)


def test_make_sampler():
  config = ml_collections.ConfigDict(dict(method="ddim", steps=50, cfg_scale=4.0, shift=1.0,
                                          eta=0.5))
  assert make_sampler(config) == Sampler("ddim", 50, 1.0, 4.0, 0.5, VPPath(1000))
  assert make_sampler(config, path=VPPath(500)).path == VPPath(500)
  assert make_sampler({"method": "heun", "steps": 25}).grid().shape == (26,)
  respaced = make_sampler({"method": "ddpm", "steps": 25, "spacing": "respaced"})
  np.testing.assert_array_equal(respaced.grid(), respaced_grid(25, 1000))
  for fields, message in [
      ({"method": "rk4"}, r"sample.method='rk4' is not one of"),
      ({"steps": 0}, r"sample.steps=0 must be a positive integer"),
      ({"shift": 0.0}, r"sample.shift=0.0 must be positive"),
      ({"method": "euler", "eta": 1.0}, r"sample.eta=1.0 only applies to method='ddim'"),
      ({"method": "ddpm", "steps": 2000}, r"sample.steps=2000 exceeds the 1000 steps"),
      ({"solver": "euler"}, r"fields \['solver'\] that the sampler does not take"),
      ({"num_steps": 500}, r"fields \['num_steps'\]: the DDPM chain is defined once, in "
                           r"config.objective"),
      ({"method": "ddim", "eta": 2.0}, r"sample.eta=2.0 must be in \[0, 1\]"),
      ({"spacing": "log"}, r"sample.spacing='log' is not one of \('uniform', 'respaced'\)"),
      ({"method": "heun", "spacing": "respaced"}, r"needs method 'ddpm' or 'ddim'"),
      ({"guide_channels": -1}, r"sample.guide_channels=-1 must be an integer >= 0"),
  ]:
    with pytest.raises(ValueError, match=message):
      make_sampler(fields)
  with pytest.raises(ValueError, match="sample.method='rk4'"):
    Sampler("rk4")(lambda x, t, c: x, None, jnp.zeros((1, 2, 2, 1)), None)
