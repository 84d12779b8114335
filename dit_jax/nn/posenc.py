"""Positional encodings as pure functions of positions.

Absolute sin-cos (1D and 2D) as in the Transformer, MAE and DiT.
"""
import jax.numpy as jnp
import numpy as np


def sincos_1d(positions: np.ndarray, dim: int, base: float = 10_000.0) -> np.ndarray:
  """(...,) positions -> (..., dim) as [sin(p w_i) | cos(p w_i)], w_i = base^(-i / (dim/2))."""
  if dim % 2:
    raise ValueError(f"sin-cos embedding dim must be even, got {dim}")
  omega = 1.0 / base ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2))
  angles = np.asarray(positions, np.float64)[..., None] * omega
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)


def sincos_2d(grid_h: int, grid_w: int, dim: int, base: float = 10_000.0) -> np.ndarray:
  """Fixed 2D embedding of a grid_h x grid_w grid, (grid_h * grid_w, dim), row-major tokens.

  The first dim/2 features encode the column index and the last dim/2 the row index (the
  layout of the MAE/DiT reference, so published `pos_embed` tables match exactly).
  """
  if dim % 4:
    raise ValueError(f"2D sin-cos embedding needs dim divisible by 4, got hidden size {dim}")
  rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
  emb = np.concatenate([sincos_1d(cols, dim // 2, base), sincos_1d(rows, dim // 2, base)], -1)
  return emb.reshape(grid_h * grid_w, dim).astype(np.float32)


def add_sincos_2d(x_BTD: jnp.ndarray, grid_h: int, grid_w: int) -> jnp.ndarray:
  """Adds the fixed 2D sin-cos table to row-major patch tokens."""
  table = jnp.asarray(sincos_2d(grid_h, grid_w, x_BTD.shape[-1]))
  return x_BTD + table.astype(x_BTD.dtype)[None]
