"""RMSNorm, and the per-head query/key normalisation of SD3.5 / FLUX attention.

RMSNorm(x) = x / sqrt(mean(x^2) + eps) * scale, computed in float32. Normalising q and k per
head bounds the attention logits, which keeps large, long-trained models stable.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from dit_jax.nn import axes

Dtype = jnp.dtype
RMS_EPS = 1e-6


def rms_norm(x: jax.Array, scale: jax.Array | None = None, eps: float = RMS_EPS) -> jax.Array:
  """x / rms(x) over the last axis (times `scale` if given), in float32, cast back to x.dtype."""
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
  if scale is not None:
    y = y * scale.astype(jnp.float32)
  return y.astype(x.dtype)


class RMSNorm(nn.Module):
  """RMSNorm with a learned scale (initialised to 1) over the last axis.

  `names` are the scale's logical axis names: (axes.KV,) for per-head q/k norms of width H,
  (axes.EMBED,) for a norm over the model width.
  """
  names: tuple[str, ...] = (axes.KV,)
  eps: float = RMS_EPS
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, self.names),
                       (x.shape[-1],), self.param_dtype)
    return rms_norm(x, scale, self.eps)
