"""Convolution and group normalisation of the convolutional families (U-Net, VAE).

Both carry logical axis names on their parameters; the epsilon of GroupNorm is explicit because
the families differ (the U-Net keeps 1e-5, flax's and PyTorch's default; diffusers' VAE uses
1e-6, which converted weights need).
"""
import flax.linen as nn
import jax.numpy as jnp

Dtype = jnp.dtype


def conv(features: int, kernel: int, names, *, name: str, dtype, param_dtype, stride: int = 1,
         padding="SAME", kernel_init=None, transpose: bool = False) -> nn.Conv:
  """A square conv (`transpose`: nn.ConvTranspose) whose kernel (k, k, in, out) carries the
  logical `names` and whose zero bias carries names[-1] (kernel_init None: lecun normal,
  flax's default)."""
  kernel_init = kernel_init or nn.initializers.lecun_normal()
  return (nn.ConvTranspose if transpose else nn.Conv)(
      features, (kernel, kernel), strides=(stride, stride), padding=padding, dtype=dtype,
      param_dtype=param_dtype, name=name,
      kernel_init=nn.with_logical_partitioning(kernel_init, tuple(names)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, tuple(names)[-1:]))


def group_norm(num_groups: int, eps: float, name: str, param_dtype=jnp.float32,
               axis_name: str | None = None) -> nn.GroupNorm:
  """GroupNorm computed in float32 (statistics per example and group of channels); scale and
  bias carry the logical name `axis_name` (None: never sharded)."""
  names = (axis_name,)
  return nn.GroupNorm(num_groups=num_groups, epsilon=eps, dtype=jnp.float32,
                      param_dtype=param_dtype, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, names),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names))
