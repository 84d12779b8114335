"""Learned-variance DDPM sampling (Improved DDPM, as the published DiT samples) against a numpy
re-derivation of the original respaced Gaussian-diffusion loop: respaced betas from ratios of
abar, posterior mean coefficients, log variance interpolated between log beta and the clipped
log posterior variance, no noise on the last step, guidance on the first three channels."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.config import base_config
from dit_jax.flow import make_objective, objectives, samplers
from dit_jax.flow.paths import VPPath, ddpm_posterior, t_to_ddpm_step

C, NULL = 4, 3


def toy_outputs(x, n, labels):
  """A deterministic (eps, v) 'model' of x (B, H, W, C), steps n (B,), labels (B,); works on
  numpy and jax arrays alike."""
  xp = jnp if isinstance(x, jax.Array) else np
  n = n.astype(x.dtype)[:, None, None, None]
  lab = labels.astype(x.dtype)[:, None, None, None]
  eps = 0.4 * x + 0.2 * lab - 0.1 + 0.05 * xp.sin(n / 100.0)
  v = xp.tanh(0.5 * x + lab - 1.0 + n / 1000.0)
  return xp.concatenate([eps, v], axis=-1)


def jax_model(x, t, cond):
  return toy_outputs(x, t_to_ddpm_step(t), cond["label"])


def reference_loop(x, labels, steps, noises, cfg_scale, ddim=False, use=None, guided=3):
  """The original loop, respaced to `steps` of 1000 (or to the ascending steps `use`),
  guiding the first `guided` channels, float64."""
  betas = np.linspace(1e-4, 0.02, 1000)
  base = np.cumprod(1.0 - betas)
  use = [round(i * 999 / (steps - 1)) for i in range(steps)] if use is None else list(use)
  new_betas, last = [], 1.0
  for i, a in enumerate(base):
    if i in use:
      new_betas.append(1.0 - a / last)
      last = a
  b = np.array(new_betas)
  acp = np.cumprod(1.0 - b)
  acp_prev = np.append(1.0, acp[:-1])
  post_var = b * (1.0 - acp_prev) / (1.0 - acp)
  post_logvar = np.log(np.append(post_var[1], post_var[1:]))
  coef1 = b * np.sqrt(acp_prev) / (1.0 - acp)
  coef2 = (1.0 - acp_prev) * np.sqrt(1.0 - b) / (1.0 - acp)
  x = np.asarray(x, np.float64)
  for k, i in enumerate(reversed(range(steps))):
    n = np.full(len(x), use[i])
    out_c = toy_outputs(x, n, labels)
    out_u = toy_outputs(x, n, np.full_like(labels, NULL))
    eps, v = out_c[..., :C].copy(), out_c[..., C:]
    g = slice(0, guided)
    eps[..., g] = out_u[..., g] + cfg_scale * (out_c[..., g] - out_u[..., g])
    x0 = np.sqrt(1.0 / acp[i]) * x - np.sqrt(1.0 / acp[i] - 1.0) * eps
    if ddim:
      x = x0 * np.sqrt(acp_prev[i]) + np.sqrt(1.0 - acp_prev[i]) * eps
      continue
    frac = (v + 1.0) / 2.0
    logvar = frac * np.log(b[i]) + (1.0 - frac) * post_logvar[i]
    mean = coef1[i] * x0 + coef2[i] * x
    x = mean + (i != 0) * np.exp(0.5 * logvar) * noises[k]
  return x


@pytest.mark.parametrize("ddim", [False, True])
def test_matches_the_original_respaced_loop(ddim):
  steps, cfg = 25, 2.5
  x0 = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 3, C))
  labels = jnp.array([0, 2])
  rng = jax.random.PRNGKey(1)
  noises = [np.asarray(jax.random.normal(k, x0.shape), np.float64)
            for k in jax.random.split(rng, steps)]
  grid = samplers.respaced_grid(steps)
  kw = {"eta": 0.0 if ddim else None, "null_cond": {"label": jnp.full(2, NULL)}, "cfg_scale": cfg}
  got = samplers.sample_ddpm(jax_model, rng, x0, {"label": labels}, grid,
                             learned_variance=True, guide_channels=3, **kw)
  want = reference_loop(np.asarray(x0), np.asarray(labels), steps, noises, cfg, ddim)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)
  # guiding all four channels is a different sampler
  other = samplers.sample_ddpm(jax_model, rng, x0, {"label": labels}, grid,
                               learned_variance=True, **kw)
  assert np.abs(np.asarray(other) - want).max() > 1e-2


@pytest.mark.parametrize("ddim", [False, True])
def test_the_converted_dit_sampler_is_the_original_respaced_loop(ddim):
  """What `sample_converted` builds for a learn_sigma checkpoint (an ImageSampler: objective
  ddpm_hybrid, sample.spacing='respaced', guide_channels=3) runs the original loop."""
  from dit_jax.sampling.converted import converted_sampler
  info = dict(patch_size=1, hidden_size=8, depth=1, num_heads=2, mlp_ratio=4.0,
              num_classes=NULL, learn_sigma=True, input_size=3, in_channels=C)
  image_sampler = converted_sampler(info, method="ddim" if ddim else "ddpm", steps=25,
                                    cfg_scale=2.5, guide_channels=3)
  sampler = image_sampler.sampler
  assert image_sampler.image_shape == (3, 3, C) and image_sampler.objective.prediction == "eps"
  assert sampler.learned_variance and sampler.path == VPPath(1000)
  x0 = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 3, C))
  labels, rng = jnp.array([0, 2]), jax.random.PRNGKey(1)
  got = sampler(jax_model, rng, x0, {"label": labels}, {"label": jnp.full(2, NULL)})
  noises = [np.asarray(jax.random.normal(k, x0.shape), np.float64)
            for k in jax.random.split(rng, 25)]
  want = reference_loop(np.asarray(x0), np.asarray(labels), 25, noises, 2.5, ddim)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_sampler_built_from_a_ddpm_hybrid_config_is_the_learned_variance_loop(method):
  """What `dit-jax sample` builds for a ddpm_hybrid run (objective and sample sections of the
  run's config) samples with the learned variance: the reference loop on the uniform grid's
  steps, all four channels guided."""
  config = base_config()
  config.objective.update(kind="ddpm_hybrid")
  config.sample.update(method=method, steps=20, cfg_scale=2.5)
  objective = make_objective(config.objective)
  sampler = samplers.make_sampler(config.sample, **objective.sampler_fields())
  assert sampler.learned_variance and sampler.path == VPPath(1000)
  x0 = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 3, C))
  labels, rng = jnp.array([0, 2]), jax.random.PRNGKey(1)
  got = sampler(jax_model, rng, x0, {"label": labels}, {"label": jnp.full(2, NULL)})
  noises = [np.asarray(jax.random.normal(k, x0.shape), np.float64)
            for k in jax.random.split(rng, 20)]
  use = sorted(np.asarray(t_to_ddpm_step(sampler.grid()))[:-1].tolist())
  assert use[-1] == 999 and len(use) == 20
  want = reference_loop(np.asarray(x0), np.asarray(labels), 20, noises, 2.5,
                        ddim=method == "ddim", use=use, guided=C)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)
  if method == "ddpm":  # the fixed-small variance of a plain eps model is another sampler
    plain = samplers.make_sampler(config.sample, path=VPPath(1000))
    fixed = plain(jax_model, rng, x0, {"label": labels}, {"label": jnp.full(2, NULL)})
    assert np.abs(np.asarray(fixed) - want).max() > 1e-2


def test_ddpm_posterior_is_bayes_rule():
  """q(x_m | x_n, x1) from q(x_n | x_m) = N(sqrt(a) x_m, 1 - a), a = abar_n / abar_m, and
  q(x_m | x1) = N(sqrt(abar_m) x1, 1 - abar_m): precisions add, means weight by precision."""
  table = np.concatenate([[1.0], np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))])
  for n, m in ((999, 998), (500, 480), (40, -1), (0, -1)):
    abar_n, abar_m = table[n + 1], table[m + 1]
    a = abar_n / abar_m
    precision = (1.0 / (1.0 - abar_m) if m >= 0 else np.inf) + a / (1.0 - a)
    var = 1.0 / precision
    post = ddpm_posterior(abar_n, abar_m)
    np.testing.assert_allclose(post.variance, var, rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(post.coef_xt, var * np.sqrt(a) / (1.0 - a), rtol=1e-10)
    if m >= 0:
      np.testing.assert_allclose(post.coef_x1, var * np.sqrt(abar_m) / (1.0 - abar_m),
                                 rtol=1e-10)
    else:  # the last step lands on x1 itself
      assert post.coef_x1 == pytest.approx(1.0) and post.coef_xt == 0.0
    assert post.beta == pytest.approx(1.0 - a)


def test_respaced_steps_keep_both_ends():
  n = samplers.respaced_steps(250)
  assert len(n) == 251 and n[0] == 999 and n[-2:].tolist() == [0, -1]
  assert n[:-1].tolist() == sorted({round(i * 999 / 249) for i in range(250)}, reverse=True)
  assert samplers.respaced_steps(1000)[:-1].tolist() == list(range(999, -1, -1))
  with pytest.raises(ValueError, match="steps=1001 must be in 1..1000"):
    samplers.respaced_steps(1001)


def test_learned_variance_endpoints():
  """v = 1 gives the respaced beta, v = -1 the posterior variance (DDPM's 'fixed small'), for
  which the learned step equals ddpm_step."""
  table = VPPath().alpha_bar_table()
  abar_n, abar_m = table[501], table[497]
  beta = 1 - abar_n / abar_m
  tilde = (1 - abar_m) / (1 - abar_n) * beta
  log_var = samplers.learned_log_variance
  np.testing.assert_allclose(np.exp(log_var(1.0, abar_n, abar_m)), beta, rtol=1e-5)
  np.testing.assert_allclose(np.exp(log_var(-1.0, abar_n, abar_m)), tilde, rtol=1e-5)
  x, eps, z = (jax.random.normal(jax.random.PRNGKey(i), (2, 2, 2, 1)) for i in range(3))
  step = samplers.ddpm_learned_step
  np.testing.assert_allclose(step(eps, -jnp.ones_like(x), x, abar_n, abar_m, z),
                             samplers.ddpm_step(eps, x, abar_n, abar_m, z), rtol=1e-5, atol=1e-6)
  # the last step (to clean data, abar_m = 1) adds no noise whatever v is
  last = samplers.ddpm_learned_step(eps, jnp.ones_like(x), x, table[5], table[0], z)
  np.testing.assert_allclose(last, samplers.ddpm_step(eps, x, table[5], table[0], 0 * z), rtol=1e-6)


def test_guided_output_keeps_variance_of_the_conditional_branch():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 2, 2, C))
  cond, null = {"label": jnp.array([0, 1])}, {"label": jnp.full(2, NULL)}
  out = samplers.guided_fn(jax_model, cond, null, 3.0, all_channels=True)(x, 0.3)
  t = jnp.full(2, 0.3)
  c, u = jax_model(x, t, cond), jax_model(x, t, null)
  np.testing.assert_allclose(out[..., :C], u[..., :C] + 3.0 * (c[..., :C] - u[..., :C]),
                             rtol=1e-5)
  np.testing.assert_allclose(out[..., C:], c[..., C:])
  with pytest.raises(ValueError, match="guide_channels=5 must be in 1..4"):
    samplers.guided_fn(jax_model, cond, null, 3.0, guide_channels=5)(x, 0.3)


# The variational-bound term (DDPMHybrid).


def test_discretized_likelihood_is_a_distribution_over_256_levels():
  levels = jnp.linspace(-1.0, 1.0, 256)
  for mean, log_scale in ((0.0, -2.0), (0.7, -4.0), (-0.95, -1.0)):
    p = jnp.exp(objectives.discretized_gaussian_log_likelihood(levels, mean, log_scale))
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-4)
    if log_scale < -1.0:  # narrow: the bin of the mean is the most likely one
      assert int(jnp.argmax(p)) == int(jnp.argmin(jnp.abs(levels - mean)))


def test_vb_is_zero_at_the_true_posterior_and_trains_only_v():
  path = VPPath()
  x1 = jax.random.uniform(jax.random.PRNGKey(0), (3, 2, 2, 1), minval=-1, maxval=1)
  eps = jax.random.normal(jax.random.PRNGKey(1), x1.shape)
  n = jnp.array([1, 400, 999])
  abar = path.alpha_bar_at_step(n)[:, None, None, None]
  x_t = jnp.sqrt(abar) * x1 + jnp.sqrt(1 - abar) * eps
  vb = lambda e, v: objectives.learned_variance_vb(e, v, x_t, x1, n, path)
  # exact eps and v = -1 (the posterior variance): p equals q, the KL vanishes
  np.testing.assert_allclose(vb(eps, -jnp.ones_like(x1)), 0.0, atol=1e-5)
  # v = 1 (variance beta) costs most where beta and beta~ differ most, near the data
  assert float(vb(eps, jnp.ones_like(x1))[0]) > 0.1
  # an eps error d moves the mean by c1 sqrt((1 - abar) / abar) d: KL = shift^2 / (2 var~)
  betas = np.linspace(1e-4, 0.02, 1000)
  ab = np.cumprod(1 - betas)
  nn_ = np.asarray(n)
  var = (1 - ab[nn_ - 1]) / (1 - ab[nn_]) * betas[nn_]
  shift = betas[nn_] * np.sqrt(ab[nn_ - 1]) / (1 - ab[nn_]) * np.sqrt((1 - ab[nn_]) / ab[nn_]) * 0.1
  np.testing.assert_allclose(vb(eps + 0.1, -jnp.ones_like(x1)),
                             shift ** 2 / (2 * var) / np.log(2), rtol=2e-3)
  grad_eps, grad_v = jax.grad(lambda e, v: vb(e, v).sum(), argnums=(0, 1))(eps,
                                                                           jnp.zeros_like(x1))
  assert float(jnp.abs(grad_eps).max()) == 0.0 and float(jnp.abs(grad_v).max()) > 0.0


def test_vb_at_step_zero_is_the_decoder_nll():
  path = VPPath()
  x1 = jnp.full((1, 1, 1, 1), 0.5)
  x_t = jnp.sqrt(path.alpha_bar_at_step(0)) * x1  # eps = 0
  vb = objectives.learned_variance_vb(jnp.zeros_like(x1), jnp.zeros_like(x1), x_t, x1,
                                      jnp.array([0]), path)
  # the model mean is x1 itself: -log2 P(|z| < (1/255) / std), std from the chain's
  # beta_0 and clipped beta~_1 (v = 0: their geometric mean)
  abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
  beta0, beta1 = 1 - abar[0], 1 - abar[1] / abar[0]
  post_var1 = (1 - abar[0]) / (1 - abar[1]) * beta1
  std = (beta0 * post_var1) ** 0.25
  half = (1 / 255) / std
  want = -math.log2(math.erf(half / math.sqrt(2)))
  assert float(vb[0]) == pytest.approx(want, rel=1e-2)


def test_hybrid_objective_is_mse_plus_vb():
  objective = objectives.DDPMHybrid()
  x1 = jax.random.uniform(jax.random.PRNGKey(0), (4, 2, 2, C), minval=-1, maxval=1)
  model = lambda x, t, cond: jnp.concatenate([0.5 * x, jnp.tanh(x)], -1)
  loss, metrics = objective.loss(model, jax.random.PRNGKey(3), x1, None)
  assert float(loss) == pytest.approx(float(metrics["mse"] + metrics["vb"]), rel=1e-6)
  assert float(metrics["vb"]) > 0
  with pytest.raises(ValueError, match="needs a learn_sigma model"):
    objective.loss(lambda x, t, c: x, jax.random.PRNGKey(3), x1, None)
