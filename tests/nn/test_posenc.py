import math

import numpy as np
import pytest

from dit_jax.nn.posenc import sincos_1d, sincos_2d


def _sincos_1d_loop(pos, dim):
  out = []
  for i in range(dim // 2):
    out.append(math.sin(pos / 10_000 ** (i / (dim / 2))))
  for i in range(dim // 2):
    out.append(math.cos(pos / 10_000 ** (i / (dim / 2))))
  return out


def test_sincos_1d_against_loop():
  positions = np.array([0, 1, 5, 63])
  expected = np.array([_sincos_1d_loop(p, 12) for p in positions])
  np.testing.assert_allclose(sincos_1d(positions, 12), expected, atol=1e-12)


def test_sincos_2d_non_square_grid_layout():
  """Token r*w + c holds [embed(col c) | embed(row r)], the MAE/DiT reference layout."""
  h, w, dim = 3, 5, 16
  table = sincos_2d(h, w, dim)
  assert table.shape == (h * w, dim)
  for r in range(h):
    for c in range(w):
      expected = _sincos_1d_loop(c, dim // 2) + _sincos_1d_loop(r, dim // 2)
      np.testing.assert_allclose(table[r * w + c], expected, atol=1e-6)


def test_sincos_2d_origin_is_zeros_then_ones_per_half():
  table = sincos_2d(4, 4, 8)
  np.testing.assert_array_equal(table[0], [0, 0, 1, 1, 0, 0, 1, 1])


def test_sincos_2d_distinct_positions():
  table = sincos_2d(6, 7, 32)
  distances = np.linalg.norm(table[:, None] - table[None], axis=-1)
  assert (distances + np.eye(42) * 1e9).min() > 1e-3


def test_sincos_dims_must_divide():
  with pytest.raises(ValueError, match="divisible by 4"):
    sincos_2d(2, 2, 10)
  with pytest.raises(ValueError, match="even"):
    sincos_1d(np.arange(3), 5)
