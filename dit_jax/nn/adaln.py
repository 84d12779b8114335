"""Adaptive layer norm: modulate() and the adaLN(-Zero) modulation head.

The update of an adaLN-Zero block, for each sub-layer Op (attention, MLP):
    x <- x + gate * Op(LN(x) * (1 + scale) + shift)
with LN a LayerNorm without affine parameters (eps 1e-6) and (shift, scale, gate) regressed
from the conditioning vector c. Norm and modulation run in float32.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from dit_jax.nn import axes
from dit_jax.nn.embed import dense, xavier_uniform

Dtype = jnp.dtype
LN_EPS = 1e-6


def layer_norm(x: jax.Array, eps: float = LN_EPS) -> jax.Array:
  """LayerNorm over the last axis without scale or bias, computed in float32."""
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  var = jnp.square(x32 - mean).mean(-1, keepdims=True)
  return (x32 - mean) * jax.lax.rsqrt(var + eps)


def modulate(x_BTD: jax.Array, shift_BD: jax.Array, scale_BD: jax.Array) -> jax.Array:
  """LN(x) * (1 + scale) + shift, one (shift, scale) per example broadcast over tokens."""
  shift = shift_BD.astype(jnp.float32)[:, None, :]
  scale = scale_BD.astype(jnp.float32)[:, None, :]
  return (layer_norm(x_BTD) * (1.0 + scale) + shift).astype(x_BTD.dtype)


def gated_residual(x_BTD: jax.Array, gate_BD: jax.Array, y_BTD: jax.Array) -> jax.Array:
  """x + gate * y, the residual update of adaLN-Zero (gate starts at 0: the identity)."""
  out = x_BTD.astype(jnp.float32) + gate_BD.astype(jnp.float32)[:, None, :] * y_BTD
  return out.astype(x_BTD.dtype)


class Modulation(nn.Module):
  """c -> SiLU -> Linear -> `num_chunks` vectors of width D, returned as a tuple of (B, D).

  `zero_init` (adaLN-Zero) starts every chunk at exactly 0: shifts and scales are then the
  identity modulation and the gates close every residual branch.
  """
  hidden_size: int
  num_chunks: int
  zero_init: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, c_BD):
    init = nn.initializers.zeros if self.zero_init else xavier_uniform()
    out = dense((self.num_chunks, self.hidden_size), (axes.EMBED, axes.MODULATION, axes.MLP),
                init, dtype=self.dtype, param_dtype=self.param_dtype, name="linear")(nn.silu(c_BD))
    return tuple(out[:, i].astype(jnp.float32) for i in range(self.num_chunks))


def affine_layer_norm(name: str, param_dtype: Dtype = jnp.float32) -> nn.LayerNorm:
  """Standard LayerNorm with learned scale and bias (eps 1e-6, float32) for blocks that do
  not condition through adaLN (cross-attention and in-context designs)."""
  return nn.LayerNorm(
      epsilon=LN_EPS, dtype=jnp.float32, param_dtype=param_dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axes.EMBED,)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes.EMBED,)))
