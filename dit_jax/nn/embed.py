"""Patchify, timestep and label embeddings.

Shapes: B batch, H/W image height/width, C channels, p patch size, T = (H/p)(W/p) tokens,
D width.
"""
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dit_jax.errors import InputError
from dit_jax.nn import axes

Dtype = jnp.dtype


def patchify(x_BHWC: jax.Array, patch_size: int) -> jax.Array:
  """(B, H, W, C) -> (B, T, p*p*C); tokens in row-major order, each patch flattened (p, p, C)."""
  B, H, W, C = x_BHWC.shape
  p = patch_size
  if H % p or W % p:
    raise InputError(
        f"image size {H}x{W} is not divisible by patch_size={p}: choose a patch size that "
        f"divides both sides, or resize/crop the input to a multiple of {p}")
  x = x_BHWC.reshape(B, H // p, p, W // p, p, C)
  x = x.transpose(0, 1, 3, 2, 4, 5)  # (B, h, w, p, p, C)
  return x.reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(x_BTP: jax.Array, patch_size: int, height: int, width: int) -> jax.Array:
  """Inverse of `patchify`: (B, T, p*p*C) -> (B, H, W, C) for an H x W image."""
  B, T, P = x_BTP.shape
  p = patch_size
  if height % p or width % p:
    raise InputError(f"image size {height}x{width} is not divisible by patch_size={p}")
  h, w = height // p, width // p
  if T != h * w or P % (p * p):
    raise InputError(
        f"cannot unpatchify {T} tokens of size {P} into a {height}x{width} image with "
        f"patch_size={p}: expected {h * w} tokens of size p*p*C")
  C = P // (p * p)
  x = x_BTP.reshape(B, h, w, p, p, C).transpose(0, 1, 3, 2, 4, 5)  # (B, h, p, w, p, C)
  return x.reshape(B, height, width, C)


def timestep_embedding(t_B: jax.Array, dim: int = 256, max_period: float = 10_000.0) -> jax.Array:
  """Sinusoidal embedding of (possibly fractional) times: (B,) -> (B, dim) as [cos | sin].

  Frequencies run geometrically from 1 down to 1/max_period ("hour / minute / second" hands),
  f_i = max_period^(-i / (dim/2)), as in DiT/ADM. An odd `dim` is padded with one zero.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t_B.astype(jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def xavier_uniform():
  """Glorot-uniform, PyTorch's xavier_uniform_. DenseGeneral calls its kernel initializer on
  the flattened (fan_in, fan_out) shape, so multi-axis kernels get the reference fans too."""
  return nn.initializers.xavier_uniform()


def _flat_init(init, in_ndim: int):
  """Calls `init` on the (fan_in, fan_out) flattening of a multi-axis kernel and reshapes: the
  same values and fans as flax's DenseGeneral."""
  def wrapped(key, shape, dtype=jnp.float32):
    flat = (math.prod(shape[:in_ndim]), math.prod(shape[in_ndim:]))
    return init(key, flat, dtype).reshape(shape)
  return wrapped


class Dense(nn.Module):
  """DenseGeneral with logical axis names on kernel (in..., out...) and bias (out...).

  Written out (rather than wrapping nn.DenseGeneral) because DenseGeneral initialises a flat
  kernel and would apply the unflattened names to it when a mesh is active.
  """
  features: int | tuple[int, ...]
  names: tuple
  kernel_init: Callable = xavier_uniform()
  bias_init: Callable = nn.initializers.zeros
  axis: int | tuple[int, ...] = -1
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    axis = (self.axis,) if isinstance(self.axis, int) else tuple(self.axis)
    axis = tuple(a % x.ndim for a in axis)
    in_shape = tuple(x.shape[a] for a in axis)
    if len(self.names) != len(in_shape) + len(features):
      raise InputError(f"{self.name}: {len(self.names)} axis names {self.names} for a kernel of "
                       f"shape {in_shape + features}")
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(_flat_init(self.kernel_init, len(in_shape)),
                                               self.names),
        in_shape + features, self.param_dtype)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    y = jax.lax.dot_general(x, kernel, ((axis, tuple(range(len(axis)))), ((), ())))
    if not self.use_bias:
      return y
    bias = self.param(
        "bias", nn.with_logical_partitioning(self.bias_init, self.names[len(in_shape):]),
        features, self.param_dtype)
    return y + bias.astype(y.dtype)


def dense(features, names, kernel_init, *, dtype, param_dtype, name, axis=-1,
          bias_init=nn.initializers.zeros, use_bias=True):
  """A Dense layer whose kernel and bias carry logical axis names (kernel names: in..., out...)."""
  return Dense(features, tuple(names), kernel_init, bias_init, axis, dtype, param_dtype,
               use_bias, name=name)


class TimestepEmbedder(nn.Module):
  """t -> sinusoidal features -> Linear -> SiLU -> Linear, (B,) -> (B, D).

  `time_scale` maps the library's t in [0, 1] onto the 0..1000 range that the DiT frequencies
  were designed for (the published checkpoints take integer DDPM steps: time_scale=1 there).
  """
  hidden_size: int
  frequency_dim: int = 256
  max_period: float = 10_000.0
  time_scale: float = 1000.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, t_B):
    freq = timestep_embedding(t_B * self.time_scale, self.frequency_dim, self.max_period)
    init = nn.initializers.normal(0.02)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = nn.silu(dense(self.hidden_size, (axes.FREQ, axes.EMBED), init, name="mlp_0", **kw)(freq))
    return dense(self.hidden_size, (axes.MLP, axes.EMBED), init, name="mlp_2", **kw)(h)


def drop_labels(rng: jax.Array, labels_B: jax.Array, prob: float, null_label: int) -> jax.Array:
  """Replaces each label by `null_label` with probability `prob` (classifier-free guidance)."""
  drop = jax.random.bernoulli(rng, prob, labels_B.shape)
  return jnp.where(drop, null_label, labels_B)


class LabelEmbedder(nn.Module):
  """Class label -> (B, D) from a table with one extra row, the null class `num_classes`.

  In training, labels are dropped to the null class with probability `dropout_prob` (needs the
  'dropout' rng); at sampling time, passing `num_classes` as the label gives the unconditional
  branch of classifier-free guidance.
  """
  num_classes: int
  hidden_size: int
  dropout_prob: float = 0.1
  param_dtype: Dtype = jnp.float32
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, labels_B, *, train: bool):
    labels_B = jnp.asarray(labels_B, jnp.int32)
    if train and self.dropout_prob > 0:
      labels_B = drop_labels(self.make_rng("dropout"), labels_B, self.dropout_prob,
                             self.num_classes)
    table = self.param(
        "embedding",
        nn.with_logical_partitioning(nn.initializers.normal(0.02), (axes.VOCAB, axes.EMBED)),
        (self.num_classes + 1, self.hidden_size), self.param_dtype)
    return jnp.take(table, labels_B, axis=0).astype(self.dtype)
