import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.nn.embed import (LabelEmbedder, TimestepEmbedder, drop_labels, patchify,
                              timestep_embedding, unpatchify)


def test_patchify_layout_by_hand():
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  tokens = patchify(x, 2)
  np.testing.assert_array_equal(tokens[0], [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13],
                                            [10, 11, 14, 15]])


def test_patchify_flattens_patch_as_row_col_channel():
  x = jnp.arange(2 * 2 * 3.0).reshape(1, 2, 2, 3)  # one 2x2 patch, 3 channels
  np.testing.assert_array_equal(patchify(x, 2)[0, 0], np.arange(12.0))


def test_patchify_equals_strided_convolution():
  """Patch embedding = patchify then a matmul = a conv with kernel p and stride p."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 8, 12, 3)).astype(np.float32)
  kernel = rng.normal(size=(4, 4, 3, 5)).astype(np.float32)  # HWIO
  conv = jax.lax.conv_general_dilated(x, kernel, (4, 4), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  ours = patchify(x, 4) @ kernel.reshape(-1, 5)
  np.testing.assert_allclose(ours, conv.reshape(2, -1, 5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,p", [((2, 8, 8, 4), 2), ((1, 8, 12, 3), 4), ((3, 16, 8, 1), 8)])
def test_patchify_round_trip(shape, p):
  x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
  tokens = patchify(x, p)
  assert tokens.shape == (shape[0], shape[1] * shape[2] // p**2, p * p * shape[3])
  np.testing.assert_array_equal(unpatchify(tokens, p, shape[1], shape[2]), x)


def test_unpatchify_matches_reference_channels_first_layout():
  """The original DiT unpatchifies with einsum 'nhwpqc->nchpwq' (NCHW); ours is its NHWC."""
  rng = np.random.default_rng(2)
  h, w, p, c = 2, 3, 2, 5
  tokens = rng.normal(size=(1, h * w, p * p * c))
  reference_nchw = np.einsum("nhwpqc->nchpwq", tokens.reshape(1, h, w, p, p, c))
  reference_nchw = reference_nchw.reshape(1, c, h * p, w * p)
  np.testing.assert_array_equal(unpatchify(tokens, p, h * p, w * p),
                                reference_nchw.transpose(0, 2, 3, 1))


def test_patchify_bad_size_names_the_fix():
  with pytest.raises(ValueError, match=r"6x6 is not divisible by patch_size=4"):
    patchify(jnp.zeros((1, 6, 6, 3)), 4)
  with pytest.raises(ValueError, match="cannot unpatchify"):
    unpatchify(jnp.zeros((1, 5, 16)), 2, 4, 4)


def test_timestep_embedding_against_loops():
  t = np.array([0.0, 1.0, 17.5, 999.0])
  dim, max_period = 10, 10_000.0
  expected = np.zeros((len(t), dim))
  for b, tb in enumerate(t):
    for i in range(dim // 2):
      freq = max_period ** (-i / (dim // 2))
      expected[b, i] = math.cos(tb * freq)
      expected[b, dim // 2 + i] = math.sin(tb * freq)
  np.testing.assert_allclose(timestep_embedding(t, dim, max_period), expected, atol=2e-4)


def test_timestep_embedding_odd_dim_is_zero_padded():
  emb = timestep_embedding(jnp.array([3.0]), 7)
  assert emb.shape == (1, 7) and emb[0, -1] == 0


def test_timestep_embedder_is_the_two_layer_mlp_of_scaled_features():
  module = TimestepEmbedder(hidden_size=16, time_scale=1000.0)
  t = jnp.array([0.0, 0.25, 1.0])
  params = module.init(jax.random.PRNGKey(0), t)["params"]
  w0, b0 = params["mlp_0"]["kernel"].value, params["mlp_0"]["bias"].value
  w2, b2 = params["mlp_2"]["kernel"].value, params["mlp_2"]["bias"].value
  assert w0.shape == (256, 16) and abs(float(w0.std()) - 0.02) < 0.003
  freq = timestep_embedding(t * 1000.0, 256)
  expected = jax.nn.silu(freq @ w0 + b0) @ w2 + b2
  np.testing.assert_allclose(module.apply({"params": params}, t), expected, rtol=1e-5, atol=1e-6)


def test_label_dropout_rate_and_null_class():
  labels = jnp.zeros(20_000, jnp.int32) + 3
  dropped = drop_labels(jax.random.PRNGKey(0), labels, 0.25, null_label=10)
  assert set(np.unique(dropped)) == {3, 10}
  assert abs(float((dropped == 10).mean()) - 0.25) < 0.01


def test_label_embedder_train_drops_eval_keeps():
  module = LabelEmbedder(num_classes=10, hidden_size=8, dropout_prob=1.0)
  labels = jnp.arange(10)
  variables = module.init(jax.random.PRNGKey(0), labels, train=False)
  table = variables["params"]["embedding"].value
  assert table.shape == (11, 8)
  np.testing.assert_array_equal(module.apply(variables, labels, train=False), table[:10])
  dropped = module.apply(variables, labels, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
  np.testing.assert_array_equal(dropped, np.broadcast_to(table[10], (10, 8)))


def test_label_table_init_std():
  module = LabelEmbedder(num_classes=1000, hidden_size=64)
  table = module.init(jax.random.PRNGKey(0), jnp.zeros(1, jnp.int32), train=False)
  assert abs(float(table["params"]["embedding"].value.std()) - 0.02) < 0.001
