import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.nn.attention import (AUTO_CHUNKED_SCORES, Attention, attention, chunked_attention,
                                  default_rope_axes_dims, resolve_backend)


def _qkv(B=2, T=20, S=20, N=3, H=8, seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  make = lambda L: jnp.asarray(rng.normal(size=(B, L, N, H)), dtype)
  return make(T), make(S), make(S)


def _loop_reference(q, k, v, mask=None):
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  B, T, N, H = q.shape
  out = np.zeros_like(q)
  for b in range(B):
    for n in range(N):
      keys = np.arange(k.shape[1]) if mask is None else np.nonzero(mask[b])[0]
      scores = q[b, :, n] @ k[b, keys, n].T / np.sqrt(H)
      probs = np.exp(scores - scores.max(-1, keepdims=True))
      probs /= probs.sum(-1, keepdims=True)
      out[b, :, n] = probs @ v[b, keys, n]
  return out


def _mask(B=2, S=20):
  mask = np.ones((B, S), bool)
  mask[0, 13:] = False
  mask[1, :4] = False
  return mask


@pytest.mark.parametrize("backend", ["xla", "chunked", "jax", "splash"])
@pytest.mark.parametrize("masked", [False, True])
def test_backends_match_loop_reference(backend, masked):
  q, k, v = _qkv(T=20, S=37)
  mask = _mask(S=37) if masked else None
  out = attention(q, k, v, None if mask is None else jnp.asarray(mask), backend=backend)
  np.testing.assert_allclose(out, _loop_reference(q, k, v, mask), rtol=2e-5, atol=2e-5)


def test_splash_gradients_match_xla():
  q, k, v = _qkv(T=16, S=16)
  mask = jnp.asarray(_mask(S=16))
  loss = lambda backend: lambda q, k, v: (attention(q, k, v, mask, backend) ** 2).sum()
  g_xla = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
  g_splash = jax.grad(loss("splash"), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(g_xla, g_splash):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["jax", "splash"])
def test_backends_agree_in_bfloat16(backend):
  q, k, v = _qkv(dtype=jnp.bfloat16, seed=3)
  ref = attention(q, k, v, backend="xla").astype(jnp.float32)
  out = attention(q, k, v, backend=backend).astype(jnp.float32)
  np.testing.assert_allclose(out, ref, atol=3e-2)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs an NVIDIA GPU")
def test_cudnn_matches_xla_on_gpu():
  q, k, v = _qkv(T=64, S=64, H=64, dtype=jnp.bfloat16)
  ref = attention(q, k, v, backend="xla").astype(jnp.float32)
  np.testing.assert_allclose(attention(q, k, v, backend="cudnn").astype(jnp.float32), ref,
                             atol=3e-2)


def test_cudnn_rejects_float32_with_a_fix():
  with pytest.raises(ValueError, match="bfloat16"):
    attention(*_qkv(), backend="cudnn")


def test_backend_resolution(monkeypatch):
  platform = {"name": "cpu"}
  monkeypatch.setattr(jax, "default_backend", lambda: platform["name"])
  assert resolve_backend("auto", jnp.bfloat16) == "xla"
  platform["name"] = "gpu"
  assert resolve_backend("auto", jnp.bfloat16) == "cudnn"
  assert resolve_backend("auto", jnp.float32) == "xla"  # cuDNN flash attention is 16-bit only
  platform["name"] = "tpu"
  assert resolve_backend("auto", jnp.float32) == "splash"
  assert resolve_backend("jax", jnp.float32) == "jax"
  platform["name"] = "gpu"  # heads wider than cuDNN's limit (the VAE's 512): no cudnn
  assert resolve_backend("auto", jnp.bfloat16, head_dim=512) == "xla"
  platform["name"] = "cpu"  # no fused kernel: long sequences go to the chunked backend
  assert resolve_backend("auto", jnp.float32, 64, AUTO_CHUNKED_SCORES) == "xla"
  assert resolve_backend("auto", jnp.float32, 64, AUTO_CHUNKED_SCORES + 1) == "chunked"
  with pytest.raises(ValueError, match="attention_backend='flash'"):
    resolve_backend("flash", jnp.float32)


def test_cross_attention_ignores_masked_context():
  module = Attention(num_heads=2)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.float32)
  ctx = jnp.asarray(rng.normal(size=(2, 6, 8)), jnp.float32)
  mask = jnp.asarray([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]], bool)
  params = module.init(jax.random.PRNGKey(0), x, ctx, mask)
  out = module.apply(params, x, ctx, mask)
  changed = ctx.at[0, 3:].set(100.0).at[1, 5].set(-50.0)
  np.testing.assert_allclose(module.apply(params, x, changed, mask), out, rtol=1e-6)
  assert not np.allclose(module.apply(params, x, changed), module.apply(params, x, ctx))


def test_self_attention_permutation_equivariant():
  """Without positions, permuting tokens permutes the output: a check on the head split."""
  module = Attention(num_heads=4)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 7, 16))
  params = module.init(jax.random.PRNGKey(1), x)
  perm = np.random.default_rng(0).permutation(7)
  np.testing.assert_allclose(module.apply(params, x[:, perm]), module.apply(params, x)[:, perm],
                             rtol=1e-5, atol=1e-6)


def test_attention_kernels_carry_logical_axes():
  module = Attention(num_heads=4)
  x = jnp.zeros((1, 3, 16))
  specs = nn.get_partition_spec(jax.eval_shape(module.init, jax.random.PRNGKey(0), x))
  assert tuple(specs["params"]["qkv"]["kernel"]) == ("embed", "qkv", "heads", "kv")
  assert tuple(specs["params"]["out"]["kernel"]) == ("heads", "kv", "embed")


@pytest.mark.parametrize("T, chunk", [(20, 8), (16, 4), (5, 8)])  # ragged, even, one chunk
def test_chunked_equals_xla_values_and_gradients_with_masks(T, chunk):
  q, k, v = _qkv(T=T, S=13, seed=4)
  mask = jnp.asarray(_mask(S=13))
  loss = lambda fn: lambda q, k, v: (fn(q, k, v) * jnp.cos(q)).sum()  # weights every output
  xla = lambda q, k, v: attention(q, k, v, mask, "xla")
  chunked = lambda q, k, v: chunked_attention(q, k, v, mask, chunk=chunk)
  np.testing.assert_allclose(chunked(q, k, v), xla(q, k, v), rtol=1e-6, atol=1e-6)
  g_xla = jax.grad(loss(xla), argnums=(0, 1, 2))(q, k, v)
  g_chunked = jax.grad(loss(chunked), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(g_xla, g_chunked):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_default_rope_axes_dims():
  assert default_rope_axes_dims(128) == (16, 56, 56)  # FLUX's split
  for h in (8, 16, 24, 64, 72):
    dims = default_rope_axes_dims(h)
    assert sum(dims) == h and all(d % 2 == 0 for d in dims)
  with pytest.raises(ValueError, match="rope_axes_dims"):
    module = Attention(num_heads=2, rope="axial", rope_axes_dims=(2, 2, 2))
    x = jnp.zeros((1, 4, 16))
    module.init(jax.random.PRNGKey(0), x, positions=jnp.zeros((1, 4, 3)))
