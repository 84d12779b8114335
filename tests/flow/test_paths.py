import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.flow.paths import (PREDICTIONS, LinearPath, VPPath, alphas_cumprod, convert,
                                convert_model_fn, ddpm_step_to_t, t_to_ddpm_step)

PATHS = [LinearPath(), VPPath()]
PAIRS = list(itertools.permutations(PREDICTIONS, 2))


def test_ddpm_schedule_against_numpy_cumprod():
  betas = np.linspace(1e-4, 0.02, 1000)
  reference = np.cumprod(1.0 - betas)
  np.testing.assert_allclose(alphas_cumprod(), reference, rtol=1e-12)
  assert alphas_cumprod()[0] == pytest.approx(0.9999)
  assert alphas_cumprod()[-1] == pytest.approx(4.0358e-5, rel=1e-4)  # sqrt: 0.00635, ~pure noise


def test_step_time_mapping():
  """n = N - 1 (where sampling starts) is t = 0; n = -1 (clean, abar = 1) is t = 1."""
  assert ddpm_step_to_t(999) == 0.0 and ddpm_step_to_t(-1) == 1.0
  assert ddpm_step_to_t(499) == pytest.approx(0.5)
  n = jnp.arange(-1, 1000)
  np.testing.assert_array_equal(t_to_ddpm_step(ddpm_step_to_t(n)), n)


def test_vp_coefficients_are_the_table_at_steps():
  path = VPPath()
  n = np.arange(-1, 1000)
  coef = path.coefficients(ddpm_step_to_t(n))
  abar = np.concatenate([[1.0], alphas_cumprod()])
  np.testing.assert_allclose(coef.alpha ** 2, abar, rtol=2e-5, atol=1e-7)
  np.testing.assert_allclose(coef.alpha ** 2 + coef.sigma ** 2, 1.0, atol=1e-6)
  np.testing.assert_allclose(path.alpha_bar_at_step(n), abar, rtol=1e-6)


@pytest.mark.parametrize("path", PATHS, ids=["linear", "vp"])
def test_derivatives_match_finite_differences(path):
  t = (np.arange(10, 990, 37) + 0.5) / 1000  # segment midpoints of the VP interpolation
  h = 1e-4
  coef = path.coefficients(t)
  lo, hi = path.coefficients(t - h), path.coefficients(t + h)
  np.testing.assert_allclose(coef.d_alpha, (hi.alpha - lo.alpha) / (2 * h), rtol=2e-2, atol=1e-3)
  np.testing.assert_allclose(coef.d_sigma, (hi.sigma - lo.sigma) / (2 * h), rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize("path", PATHS, ids=["linear", "vp"])
@pytest.mark.parametrize("source,target", PAIRS)
def test_conversions_round_trip(path, source, target):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4, 2, 2, 3)).astype(np.float32)
  pred = rng.normal(size=x.shape).astype(np.float32)
  coef = path.coefficients(np.array([0.1, 0.4, 0.6, 0.9], np.float32))
  back = convert(convert(pred, x, coef, source, target), x, coef, target, source)
  np.testing.assert_allclose(back, pred, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("path", PATHS, ids=["linear", "vp"])
@pytest.mark.parametrize("source,target", PAIRS)
def test_exact_gaussian_predictions_agree_after_conversion(gaussian, path, source, target):
  """The closed-form x1, eps, score and velocity of Gaussian data (conftest) are one another's
  conversions; the velocity there is derived from the marginal, not from alpha' x1 + sigma' eps."""
  x = np.random.default_rng(1).normal(size=(5, 3, 3, 2)).astype(np.float32)
  coef = path.coefficients(np.array([0.05, 0.3, 0.5, 0.7, 0.95], np.float32))
  ours = convert(gaussian.exact(source, x, coef), x, coef, source, target)
  np.testing.assert_allclose(ours, gaussian.exact(target, x, coef), rtol=2e-3, atol=2e-3)


def test_linear_path_velocity_is_x1_minus_x0():
  rng = np.random.default_rng(2)
  x1, x0 = rng.normal(size=(2, 2, 3, 2, 1)).astype(np.float32)
  t = np.array([0.2, 0.7], np.float32)
  x_t = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * x1
  coef = LinearPath().coefficients(t)
  np.testing.assert_allclose(convert(x1, x_t, coef, "x1", "velocity"), x1 - x0, atol=1e-5)
  np.testing.assert_allclose(convert(x0, x_t, coef, "eps", "velocity"), x1 - x0, atol=1e-5)


def test_convert_model_fn_drops_variance_channels(gaussian):
  path = VPPath()
  eps_fn = gaussian.model_fn(path, "eps")
  with_variance = lambda x, t, c: jnp.concatenate([eps_fn(x, t, c), jnp.full_like(x, 7.0)], -1)
  velocity_fn = convert_model_fn(with_variance, path, "eps", "velocity")
  x = np.random.default_rng(3).normal(size=(2, 2, 2, 3)).astype(np.float32)
  t = np.array([0.25, 0.75], np.float32)
  np.testing.assert_allclose(velocity_fn(x, t, None),
                             gaussian.exact("velocity", x, path.coefficients(t)), rtol=2e-3,
                             atol=2e-3)


def test_bad_prediction_names_the_options():
  with pytest.raises(ValueError, match="prediction='v' is not one of"):
    convert(jnp.zeros(2), jnp.zeros(2), LinearPath().coefficients(0.5), "v", "eps")
