import math

import jax
import numpy as np
import pytest

from dit_jax.flow.timesteps import (flux_shift, logit_normal_t, sample_t, sd3_shift, shift_time,
                                    shifted_grid, uniform_grid, uniform_t)


@pytest.mark.parametrize("shift", [0.5, 1.0, 3.0, 6.0])
def test_shift_is_sd3_formula_on_sigma(shift):
  """SD3 shifts the noise level sigma = 1 - t: sigma' = s sigma / (1 + (s - 1) sigma)."""
  t = np.linspace(0.0, 1.0, 101)
  sigma = 1.0 - t
  sigma_shifted = shift * sigma / (1.0 + (shift - 1.0) * sigma)
  np.testing.assert_allclose(shift_time(t, shift), 1.0 - sigma_shifted, atol=1e-6)


def test_shift_fixes_endpoints_and_moves_towards_noise():
  t = np.linspace(0.0, 1.0, 11)
  np.testing.assert_array_equal(shift_time(t, 1.0), t.astype(np.float32))
  shifted = np.asarray(shift_time(t, 3.0))
  assert shifted[0] == 0.0 and shifted[-1] == 1.0
  assert np.all(shifted[1:-1] < t[1:-1]) and np.all(np.diff(shifted) > 0)
  assert shift_time(0.5, 3.0) == pytest.approx(0.25)  # 0.5 / (3 - 2 * 0.5)


def test_sd3_shift_is_sqrt_of_token_ratio():
  assert sd3_shift(4096) == 4.0  # 1024^2 image, f=8 latent, patch 2, against 256^2
  assert sd3_shift(1024, 256) == 2.0
  assert sd3_shift(256) == 1.0
  with pytest.raises(ValueError, match="positive"):
    sd3_shift(0)


def test_flux_shift_matches_its_time_shift():
  """FLUX: mu linear in tokens, 0.5 at 256 to 1.15 at 4096; sigma' = e^mu / (e^mu + 1/sigma - 1)."""
  assert flux_shift(256) == pytest.approx(math.exp(0.5))
  assert flux_shift(4096) == pytest.approx(math.exp(1.15))
  mu = 0.5 + (1.15 - 0.5) * (1024 - 256) / (4096 - 256)
  assert flux_shift(1024) == pytest.approx(math.exp(mu))
  sigma = np.linspace(0.05, 1.0, 20)
  flux_sigma = math.exp(mu) / (math.exp(mu) + (1.0 / sigma - 1.0))
  np.testing.assert_allclose(shift_time(1.0 - sigma, flux_shift(1024)), 1.0 - flux_sigma,
                             atol=1e-6)


def test_uniform_and_logit_normal_moments():
  u = np.asarray(uniform_t(jax.random.PRNGKey(0), (100_000,)))
  assert u.min() >= 0 and u.max() < 1
  assert u.mean() == pytest.approx(0.5, abs=0.01) and u.var() == pytest.approx(1 / 12, abs=0.002)
  t = np.asarray(logit_normal_t(jax.random.PRNGKey(1), (100_000,), mean=0.5, std=0.8))
  logit = np.log(t / (1 - t))
  assert logit.mean() == pytest.approx(0.5, abs=0.02)
  assert logit.std() == pytest.approx(0.8, abs=0.02)


def test_sample_t_shifts_the_distribution():
  """Shifting is monotone, so the median of shifted U(0, 1) is shift_time(0.5)."""
  t = np.asarray(sample_t(jax.random.PRNGKey(2), (100_000,), "uniform", shift=3.0))
  assert np.median(t) == pytest.approx(0.25, abs=0.01)
  t = np.asarray(sample_t(jax.random.PRNGKey(3), (100_000,), "logit_normal", 0.0, 1.0, 1.0))
  assert np.median(t) == pytest.approx(0.5, abs=0.01)
  with pytest.raises(ValueError, match="t_dist='beta' is not one of"):
    sample_t(jax.random.PRNGKey(0), (4,), "beta")


def test_grids():
  np.testing.assert_allclose(uniform_grid(4), [0.0, 0.25, 0.5, 0.75, 1.0])
  grid = np.asarray(shifted_grid(10, 3.0))
  assert grid.shape == (11,) and grid[0] == 0.0 and grid[-1] == 1.0
  steps = np.diff(grid)
  assert np.all(np.diff(steps) > 0)  # small steps near noise, large near data
  assert steps[0] < 0.1 < steps[-1]
  np.testing.assert_array_equal(shifted_grid(10, 1.0), uniform_grid(10))
  with pytest.raises(ValueError, match="steps=0"):
    uniform_grid(0)
