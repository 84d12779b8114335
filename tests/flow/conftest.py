"""Gaussian data, for which every quantity of a Gaussian path is known in closed form.

Data x1 ~ N(mu, s^2) in every dimension, noise eps ~ N(0, 1), x = a x1 + b eps with
(a, b) = (alpha(t), sigma(t)). Then x ~ N(a mu, V), V = a^2 s^2 + b^2, and (x1, eps, x) are
jointly Gaussian, so the posterior means are linear in r = x - a mu:
    E[x1 | x] = mu + (a s^2 / V) r,   E[eps | x] = (b / V) r,   score = -r / V.
The marginal flow is the affine map that keeps x ~ N(a mu, V): r scales with sqrt(V), so
    velocity = a' mu + (V' / 2V) r,   V' = 2 a a' s^2 + 2 b b'.
On the linear path (a = t, b = 1 - t) this is E[x1 - x0 | x_t] = mu + (t s^2 - (1-t)) / V r,
and the ODE from t = 0 maps x0 to mu + s x0 exactly. These formulas are written without the
library's conversions, so the tests compare two independent derivations.
"""
import dataclasses

import jax.numpy as jnp
import pytest


def _expand(c, x):
  c = jnp.asarray(c, jnp.float32)
  return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))


@dataclasses.dataclass(frozen=True)
class Gaussian:
  mu: float = 1.5
  s: float = 0.3

  def exact(self, kind, x, coef, mu=None):
    """Exact x1 / eps / score / velocity at x for path coefficients `coef`."""
    mu = self.mu if mu is None else mu
    a, b, da, db = (_expand(c, x) for c in coef)
    V = a ** 2 * self.s ** 2 + b ** 2
    r = x - a * mu
    if kind == "x1":
      return mu + a * self.s ** 2 / V * r
    if kind == "eps":
      return b / V * r
    if kind == "score":
      return -r / V
    dV = 2 * a * da * self.s ** 2 + 2 * b * db
    return da * mu + dV / (2 * V) * r

  def model_fn(self, path, kind):
    """model_fn(x, t, cond) returning the exact `kind` prediction on `path`."""
    return lambda x, t, cond: self.exact(kind, x, path.coefficients(t))

  def flow_map(self, x0):
    """Where the linear-path ODE started at x0 (t = 0) arrives at t = 1."""
    return self.mu + self.s * x0


@pytest.fixture
def gaussian():
  return Gaussian()
