import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.nn.adaln import Modulation, gated_residual, layer_norm, modulate


def _np_layer_norm(x, eps=1e-6):
  x = np.asarray(x, np.float64)
  return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)


def test_layer_norm_without_affine_matches_numpy():
  x = np.random.default_rng(0).normal(3.0, 2.0, size=(2, 5, 16))
  np.testing.assert_allclose(layer_norm(jnp.asarray(x, jnp.float32)), _np_layer_norm(x),
                             rtol=1e-5, atol=1e-5)


def test_layer_norm_eps_is_1e_6():
  x = jnp.array([[0.0, 1e-3]])  # variance 2.5e-7 is comparable to eps
  np.testing.assert_allclose(layer_norm(x), _np_layer_norm(x, 1e-6), rtol=1e-4)


def test_modulate_is_ln_times_one_plus_scale_plus_shift():
  rng = np.random.default_rng(1)
  x, shift, scale = rng.normal(size=(2, 3, 8)), rng.normal(size=(2, 8)), rng.normal(size=(2, 8))
  expected = _np_layer_norm(x) * (1 + scale[:, None]) + shift[:, None]
  out = modulate(jnp.asarray(x, jnp.float32), jnp.asarray(shift), jnp.asarray(scale))
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_modulate_keeps_compute_dtype_and_runs_in_float32():
  x = jnp.full((1, 2, 4), 1024.0, jnp.bfloat16).at[..., 0].set(1032.0)  # exact in bf16
  out = modulate(x, jnp.zeros((1, 4)), jnp.zeros((1, 4)))
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32)[0, 0], [1.732, -0.577, -0.577, -0.577],
                             atol=1e-2)


def test_gated_residual_zero_gate_is_identity():
  x = jnp.arange(12.0).reshape(1, 3, 4)
  y = jnp.ones((1, 3, 4)) * 7
  np.testing.assert_array_equal(gated_residual(x, jnp.zeros((1, 4)), y), x)
  np.testing.assert_array_equal(gated_residual(x, jnp.full((1, 4), 0.5), y), x + 3.5)


def test_modulation_zero_init_and_chunk_order():
  c = jax.random.normal(jax.random.PRNGKey(0), (3, 8))
  zero = Modulation(hidden_size=8, num_chunks=6, zero_init=True)
  chunks = zero.apply(zero.init(jax.random.PRNGKey(1), c), c)
  assert len(chunks) == 6 and all(float(jnp.abs(ch).max()) == 0 for ch in chunks)

  module = Modulation(hidden_size=8, num_chunks=3, zero_init=False)
  params = nn.unbox(module.init(jax.random.PRNGKey(1), c))["params"]["linear"]
  chunks = module.apply({"params": {"linear": params}}, c)
  # chunk i is columns [i*D, (i+1)*D) of one Linear(D, 3D), as torch's .chunk(3, dim=1)
  flat = jax.nn.silu(c) @ params["kernel"].reshape(8, 24) + params["bias"].reshape(24)
  for i, ch in enumerate(chunks):
    np.testing.assert_allclose(ch, flat[:, 8 * i:8 * (i + 1)], rtol=1e-5, atol=1e-6)
