"""Transformer MLP: Linear -> GELU (tanh approximation) -> Linear."""
import flax.linen as nn
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from dit_jax.nn import axes
from dit_jax.nn.embed import dense, xavier_uniform

Dtype = jnp.dtype


class Mlp(nn.Module):
  """(B, T, D) -> (B, T, D) through a hidden width F = mlp_ratio * D."""
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BTD):
    D = x_BTD.shape[-1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h_BTF = dense(int(D * self.mlp_ratio), (axes.EMBED, axes.MLP), xavier_uniform(), name="fc1",
                  **kw)(x_BTD)
    h_BTF = nn.with_logical_constraint(h_BTF, (axes.BATCH, axes.LENGTH, axes.MLP))
    h_BTF = checkpoint_name(nn.gelu(h_BTF, approximate=True), "mlp_hidden")
    return dense(D, (axes.MLP, axes.EMBED), xavier_uniform(), name="fc2", **kw)(h_BTF)
