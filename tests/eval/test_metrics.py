"""The metrics against closed forms, brute force and a second computation."""
import numpy as np
import pytest
import scipy.linalg

from dit_jax.eval import metrics
from dit_jax.eval.metrics import GaussianStats, frechet_distance


def _random_spd(rng, d):
  a = rng.normal(size=(d, d))
  return a @ a.T / d + 0.1 * np.eye(d)


def test_statistics_are_numpys_float64_mean_and_covariance():
  x = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
  stats = GaussianStats.of(x)
  assert stats.mu.dtype == stats.sigma.dtype == np.float64
  np.testing.assert_allclose(stats.mu, x.astype(np.float64).mean(0), rtol=1e-12)
  np.testing.assert_allclose(stats.sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12)
  with pytest.raises(ValueError, match="at least 2"):
    GaussianStats.of(x[:1])


def test_frechet_distance_of_commuting_gaussians_is_the_closed_form():
  # Same eigenvectors: FD = |mu_a - mu_b|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
  rng = np.random.default_rng(1)
  q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
  a, b = rng.uniform(0.1, 3.0, 5), rng.uniform(0.1, 3.0, 5)
  mu_a, mu_b = rng.normal(size=5), rng.normal(size=5)
  fd = frechet_distance(GaussianStats(mu_a, q @ np.diag(a) @ q.T),
                        GaussianStats(mu_b, q @ np.diag(b) @ q.T))
  expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  assert fd == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_equals_the_sqrtm_formula_and_is_symmetric():
  rng = np.random.default_rng(2)
  sa, sb = _random_spd(rng, 8), _random_spd(rng, 8)
  a, b = GaussianStats(rng.normal(size=8), sa), GaussianStats(rng.normal(size=8), sb)
  root = scipy.linalg.sqrtm(sa @ sb).real  # the ADM evaluator's route
  expected = np.sum((a.mu - b.mu) ** 2) + np.trace(sa) + np.trace(sb) - 2 * np.trace(root)
  assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
  assert frechet_distance(b, a) == pytest.approx(frechet_distance(a, b), rel=1e-10)
  assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-10)


def test_frechet_distance_of_a_rank_deficient_set_against_itself_is_zero():
  # Fewer samples than dimensions: singular covariances, where sqrtm needs an eps retry.
  x = np.random.default_rng(3).normal(size=(10, 32))
  stats = GaussianStats.of(x)
  # Zero eigenvalues come out as +-1e-16, whose square roots (1e-8) add up: relative 1e-7.
  assert abs(frechet_distance(stats, stats)) < 1e-7 * np.trace(stats.sigma)
  with pytest.raises(ValueError, match="same feature network"):
    frechet_distance(stats, GaussianStats.of(x[:, :16]))


def test_inception_score_by_hand():
  k = 4
  confident = 50.0 * np.eye(k)[np.arange(40) % k]  # one-hot posteriors, uniform marginal
  assert metrics.inception_score(confident)[0] == pytest.approx(k, rel=1e-6)
  assert metrics.inception_score(np.zeros((40, k)))[0] == pytest.approx(1.0)
  # Two classes, one split: posteriors (0.8, 0.2) and (0.2, 0.8) -> marginal (0.5, 0.5),
  # KL = 0.8 log 1.6 + 0.2 log 0.4 for both.
  logits = np.log(np.array([[0.8, 0.2], [0.2, 0.8]]))
  mean, std = metrics.inception_score(logits, splits=1)
  assert mean == pytest.approx(np.exp(0.8 * np.log(1.6) + 0.2 * np.log(0.4)), rel=1e-12)
  assert std == 0.0
  with pytest.raises(ValueError, match="10 splits needs >= 10"):
    metrics.inception_score(logits)


def _brute_force_pr(real, fake, k):
  def radii(x):
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    return np.sort(d, axis=1)[:, k]  # the point itself is the 0-th neighbour

  def within(points, manifold, r):
    d = ((points[:, None] - manifold[None]) ** 2).sum(-1)
    return (d <= r[None]).any(axis=1).mean()
  return within(fake, real, radii(real)), within(real, fake, radii(fake))


@pytest.mark.parametrize("block", [7, 1024])  # several padded blocks, and one
def test_precision_recall_equal_brute_force(monkeypatch, block):
  monkeypatch.setattr(metrics, "_BLOCK", block)
  rng = np.random.default_rng(4)
  real = rng.normal(size=(40, 5))
  fake = np.concatenate([rng.normal(size=(20, 5)), rng.normal(3.0, 1.0, size=(15, 5))])
  precision, recall = metrics.precision_recall(real, fake, k=3)
  expected = _brute_force_pr(real.astype(np.float32), fake.astype(np.float32), 3)
  assert (precision, recall) == pytest.approx(expected, abs=1e-12)
  assert 0.3 < precision < 0.9  # the shifted cluster lies off the real manifold
  assert metrics.precision_recall(real, real) == (1.0, 1.0)


def test_conditional_accuracy():
  logits = np.array([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0]])
  assert metrics.conditional_accuracy(logits, np.array([0, 1, 1])) == pytest.approx(2 / 3)
  with pytest.raises(ValueError, match="one label per sample"):
    metrics.conditional_accuracy(logits, np.array([0, 1]))
