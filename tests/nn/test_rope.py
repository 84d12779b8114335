import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.nn.posenc import (apply_rope, axial_rope_angles, canonical_ids, grid_ids,
                               interpolate_ids, mixed_frequencies, mixed_rope_angles, msrope_ids,
                               ntk_base, rope_angles, rope_frequencies)

H = 16


def _vectors(L, N=1, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(1, L, N, H)), jnp.float32)


def _rotation_matrix(angles):
  """Block-diagonal H x H matrix of 2x2 rotations, one per interleaved pair."""
  R = np.zeros((2 * len(angles), 2 * len(angles)))
  for i, a in enumerate(np.asarray(angles, np.float64)):
    R[2 * i:2 * i + 2, 2 * i:2 * i + 2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
  return R


def _scores(q, k, angles_q, angles_k):
  qr = apply_rope(q, angles_q[None, :, None, :])
  kr = apply_rope(k, angles_k[None, :, None, :])
  return np.einsum("blnh,bmnh->lm", qr, kr)


def test_frequencies_and_matrix_rotation():
  np.testing.assert_allclose(rope_frequencies(8, 100.0), [1, 100 ** -0.25, 0.1, 100 ** -0.75])
  x = _vectors(3)
  angles = rope_angles(jnp.array([0.0, 1.0, 7.5]), H)
  rotated = apply_rope(x, angles[None, :, None, :])
  for m in range(3):
    np.testing.assert_allclose(rotated[0, m, 0], _rotation_matrix(angles[m]) @ x[0, m, 0],
                               rtol=1e-5, atol=1e-5)


def test_rotation_preserves_norms():
  x = _vectors(5, N=2)
  angles = rope_angles(jnp.arange(5.0) * 3.1, H)
  np.testing.assert_allclose(jnp.linalg.norm(apply_rope(x, angles[None, :, None, :]), axis=-1),
                             jnp.linalg.norm(x, axis=-1), rtol=1e-5)


def test_1d_scores_depend_only_on_relative_position():
  q, k = _vectors(6, seed=1), _vectors(6, seed=2)
  pos = jnp.array([0.0, 1.0, 2.0, 5.0, 9.0, 13.0])
  base = _scores(q, k, rope_angles(pos, H), rope_angles(pos, H))
  shifted = _scores(q, k, rope_angles(pos + 37.0, H), rope_angles(pos + 37.0, H))
  np.testing.assert_allclose(shifted, base, rtol=1e-4, atol=1e-4)
  # q_m . k_n equals q . R(n - m) k, the relative rotation of the RoPE paper.
  m, n = 1, 4
  R = _rotation_matrix(rope_angles(pos[n] - pos[m], H))
  np.testing.assert_allclose(base[m, n], q[0, m, 0] @ R @ k[0, n, 0], rtol=1e-4)


@pytest.mark.parametrize("axis", [1, 2])
def test_axial_scores_invariant_to_a_shift_along_each_axis(axis):
  q, k = _vectors(12, seed=3), _vectors(12, seed=4)
  ids = jnp.asarray(grid_ids(3, 4))
  dims = (0, 8, 8)
  base = _scores(q, k, axial_rope_angles(ids, dims), axial_rope_angles(ids, dims))
  moved = ids.at[:, axis].add(11.0)
  shifted = _scores(q, k, axial_rope_angles(moved, dims), axial_rope_angles(moved, dims))
  np.testing.assert_allclose(shifted, base, rtol=1e-4, atol=1e-4)


def _cross_difference(angle_fn, q, k):
  """f(1,1) - f(1,0) - f(0,1) + f(0,0) of the score against (d_row, d_col): zero when every
  rotary pair sees one axis only (additively separable), non-zero when axes interact."""
  def f(dr, dc):
    ids_k = jnp.array([[0.0, 0.0, 0.0]])
    ids_q = jnp.array([[0.0, dr, dc]])
    return float(_scores(q, k, angle_fn(ids_q), angle_fn(ids_k))[0, 0])
  return f(3, 5) - f(3, 0) - f(0, 5) + f(0, 0)


def test_mixed_axes_interact_and_axial_do_not():
  q, k = _vectors(1, seed=5), _vectors(1, seed=6)
  axial = lambda ids: axial_rope_angles(ids, (0, 8, 8))
  freqs = mixed_frequencies(jnp.array([0.7]), H)
  mixed = lambda ids: mixed_rope_angles(ids[:, 1:], freqs)[:, 0]
  assert abs(_cross_difference(axial, q, k)) < 1e-4
  assert abs(_cross_difference(mixed, q, k)) > 1e-2
  # With the directions at 0 and pi/2 the mixed frequencies are axis-aligned: no interaction.
  aligned = mixed_frequencies(jnp.array([0.0]), H)
  assert abs(_cross_difference(lambda ids: mixed_rope_angles(ids[:, 1:], aligned)[:, 0],
                               q, k)) < 1e-4


def test_mixed_frequency_init():
  freqs = np.asarray(mixed_frequencies(jnp.array([0.3, 2.0]), H, base=10.0))
  assert freqs.shape == (2, 2, H // 2)
  magnitude = np.hypot(freqs[0], freqs[1])
  np.testing.assert_allclose(magnitude[0], np.tile(10.0 ** (-np.arange(0, H, 4) / H), 2),
                             rtol=1e-5)
  first, second = freqs[:, 0, 0], freqs[:, 0, H // 4]  # same magnitude, directions phi, phi+90
  assert abs(first @ second) < 1e-6


def test_mixed_scores_invariant_to_common_shift():
  q, k = _vectors(12, N=2, seed=7), _vectors(12, N=2, seed=8)
  freqs = mixed_frequencies(jnp.array([0.4, 1.9]), H)
  ids = jnp.asarray(grid_ids(3, 4))[:, 1:]
  score = lambda ids: np.einsum("blnh,bmnh->nlm",
                                apply_rope(q, mixed_rope_angles(ids, freqs)[None]),
                                apply_rope(k, mixed_rope_angles(ids, freqs)[None]))
  np.testing.assert_allclose(score(ids + jnp.array([4.0, -9.0])), score(ids), rtol=1e-4,
                             atol=1e-4)


@pytest.mark.parametrize("n", [4, 6, 8, 13, 32])
def test_canonical_ids_keep_centre_and_edges(n):
  ids = jnp.asarray(grid_ids(n, n))
  mapped = np.asarray(canonical_ids(ids, (n, n), (8, 8)))
  np.testing.assert_allclose(mapped[:, 1:].mean(0), [3.5, 3.5], atol=1e-5)  # the centre
  step = 8 / n  # cell edges -1/2 and n - 1/2 map to the reference's -1/2 and 8 - 1/2
  np.testing.assert_allclose(mapped[:, 1].min() - step / 2, -0.5, atol=1e-5)
  np.testing.assert_allclose(mapped[:, 1].max() + step / 2, 7.5, atol=1e-5)
  np.testing.assert_array_equal(mapped[:, 0], 0)


def test_interpolation_and_ntk():
  ids = jnp.asarray(grid_ids(16, 16))
  np.testing.assert_allclose(np.asarray(interpolate_ids(ids, (16, 16), (8, 8)))[:, 1:].max(0),
                             [7.5, 7.5])
  base = ntk_base(10_000.0, 4.0, H)
  lowest = rope_frequencies(H, base)[-1] / rope_frequencies(H, 10_000.0)[-1]
  assert lowest == pytest.approx(1 / 4)  # the slowest pair is stretched by the scale
  assert rope_frequencies(H, base)[0] == 1.0  # the fastest is unchanged


def test_msrope_layout_and_text_is_1d_rope():
  image, text = msrope_ids(4, 6, text_len=5)
  assert image.shape == (24, 3) and text.shape == (5, 3)
  np.testing.assert_allclose(image[:, 1:].mean(0), [-0.5, -0.5])  # centred grid
  assert text[:, 1:].min() > image[:, 1:].max()  # after the image extent: no collision
  np.testing.assert_array_equal(text[:, 0], text[:, 1])
  dims = (4, 6, 6)
  angles = axial_rope_angles(jnp.asarray(text), dims)
  freqs = np.concatenate([rope_frequencies(d) for d in dims])
  np.testing.assert_allclose(angles, text[:, :1] * freqs, rtol=1e-6)  # 1D RoPE, those freqs
  q, k = _vectors(5, seed=9), _vectors(5, seed=10)
  a = axial_rope_angles(jnp.asarray(text), dims)
  b = axial_rope_angles(jnp.asarray(text + 7.0), dims)
  np.testing.assert_allclose(_scores(q, k, b, b), _scores(q, k, a, a), rtol=1e-4, atol=1e-4)


def test_bad_rope_inputs():
  with pytest.raises(ValueError, match="even width"):
    rope_frequencies(7)
  with pytest.raises(ValueError, match="3 axes but rope axes_dims"):
    axial_rope_angles(jnp.zeros((2, 3)), (8, 8))
  with pytest.raises(ValueError, match="heads are 16 wide"):
    apply_rope(_vectors(2), jnp.zeros((2, 4)))
