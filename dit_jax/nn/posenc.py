"""Positional encodings as pure functions of positions.

Absolute sin-cos (1D and 2D) as in the Transformer, MAE and DiT; the RoPE family (1D, axial
2D, mixed 2D, resolution-scaled positions, NTK base scaling, MSRoPE ids).
"""
import jax.numpy as jnp
import numpy as np

from dit_jax.errors import InputError


def sincos_1d(positions: np.ndarray, dim: int, base: float = 10_000.0) -> np.ndarray:
  """(...,) positions -> (..., dim) as [sin(p w_i) | cos(p w_i)], w_i = base^(-i / (dim/2))."""
  if dim % 2:
    raise InputError(f"sin-cos embedding dim must be even, got {dim}")
  omega = 1.0 / base ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2))
  angles = np.asarray(positions, np.float64)[..., None] * omega
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)


def sincos_2d(grid_h: int, grid_w: int, dim: int, base: float = 10_000.0,
              max_size: int = 0) -> np.ndarray:
  """Fixed 2D embedding of a grid_h x grid_w grid, (grid_h * grid_w, dim), row-major tokens.

  The first dim/2 features encode the column index and the last dim/2 the row index (the
  layout of the MAE/DiT reference, so published `pos_embed` tables match exactly). With
  max_size, the centre crop of a max_size^2 table (SD3's pos_embed_max_size), so a small grid
  sits in the middle of the trained range.
  """
  if dim % 4:
    raise InputError(f"2D sin-cos embedding needs dim divisible by 4, got hidden size {dim}")
  top, left = ((max_size - grid_h) // 2, (max_size - grid_w) // 2) if max_size else (0, 0)
  rows, cols = np.meshgrid(np.arange(grid_h) + top, np.arange(grid_w) + left, indexing="ij")
  emb = np.concatenate([sincos_1d(cols, dim // 2, base), sincos_1d(rows, dim // 2, base)], -1)
  return emb.reshape(grid_h * grid_w, dim).astype(np.float32)


def add_sincos_2d(x_BTD: jnp.ndarray, grid_h: int, grid_w: int,
                  max_size: int = 0) -> jnp.ndarray:
  """Adds the fixed 2D sin-cos table to row-major patch tokens."""
  table = jnp.asarray(sincos_2d(grid_h, grid_w, x_BTD.shape[-1], max_size=max_size))
  return x_BTD + table.astype(x_BTD.dtype)[None]


# Rotary position embeddings (RoPE). Rotary pairs are interleaved, (x[2i], x[2i+1]) is rotated
# by angle_i, as in the RoPE paper and FLUX. Positions are explicit float id arrays whose last
# axis lists the coordinates, e.g. (index, row, col); non-square grids and several images or
# text segments are just other ids.


def rope_frequencies(dim: int, base: float = 10_000.0) -> np.ndarray:
  """theta_i = base^(-2i/dim) for the dim/2 rotary pairs of a dim-wide vector."""
  if dim % 2:
    raise InputError(f"RoPE needs an even width, got {dim}")
  return base ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)


def rope_angles(positions_L: jnp.ndarray, dim: int, base: float = 10_000.0) -> jnp.ndarray:
  """1D RoPE angles m * theta_i: (..., L) positions -> (..., L, dim/2)."""
  freqs = jnp.asarray(rope_frequencies(dim, base), jnp.float32)
  return jnp.asarray(positions_L, jnp.float32)[..., None] * freqs


def axial_rope_angles(ids_LA: jnp.ndarray, axes_dims: tuple[int, ...],
                      base: float = 10_000.0) -> jnp.ndarray:
  """Axial RoPE: axis a of the ids rotates its own block of axes_dims[a] features with 1D RoPE
  frequencies of that width (FLUX: (16, 56, 56) for (index, row, col)); (..., L, A) ->
  (..., L, sum(axes_dims)/2). Axes never mix: a pair sees one coordinate only."""
  if ids_LA.shape[-1] != len(axes_dims):
    raise InputError(f"position ids have {ids_LA.shape[-1]} axes but rope axes_dims="
                     f"{tuple(axes_dims)} has {len(axes_dims)}")
  parts = [rope_angles(ids_LA[..., a], d, base) for a, d in enumerate(axes_dims) if d]
  return jnp.concatenate(parts, axis=-1)


def mixed_frequencies(phi_N: jnp.ndarray, head_dim: int, base: float = 10.0) -> jnp.ndarray:
  """Initial (2, N, H/2) (row, col) frequencies of RoPE-Mixed (Heo et al. 2024) for head
  directions phi_N: magnitudes base^(-4j/H), j < H/4, along phi and along phi + pi/2; a pair's
  (col, row) frequency is that vector's (cos, sin) components."""
  if head_dim % 4:
    raise InputError(f"mixed 2D RoPE needs a head width divisible by 4, got {head_dim}")
  magnitude = base ** (-jnp.arange(0, head_dim, 4, dtype=jnp.float32) / head_dim)  # (H/4,)
  phi_NK = jnp.repeat(jnp.asarray(phi_N, jnp.float32)[:, None], magnitude.size, axis=1)
  directions = jnp.concatenate([phi_NK, phi_NK + jnp.pi / 2], -1)  # (N, H/2)
  magnitudes = jnp.concatenate([magnitude, magnitude])  # (H/2,)
  return jnp.stack([magnitudes * jnp.sin(directions), magnitudes * jnp.cos(directions)])


def mixed_rope_angles(ids_L2: jnp.ndarray, freqs_2NK: jnp.ndarray) -> jnp.ndarray:
  """RoPE-Mixed angles p_row f_row + p_col f_col per head: (..., L, 2) (row, col) ids and
  (2, N, K) frequencies -> (..., L, N, K). With both frequencies non-zero, a pair mixes axes."""
  ids = jnp.asarray(ids_L2, jnp.float32)
  return jnp.einsum("...la,ank->...lnk", ids, freqs_2NK.astype(jnp.float32))


def apply_rope(x_BLNH: jnp.ndarray, angles: jnp.ndarray) -> jnp.ndarray:
  """Rotates interleaved pairs of x by `angles`, broadcastable to (B, L, N, H/2): give
  angles shared by all heads a head axis of 1, e.g. (B, L, 1, H/2)."""
  B, L, N, H = x_BLNH.shape
  if angles.shape[-1] != H // 2:
    raise InputError(f"RoPE angles cover {2 * angles.shape[-1]} features, heads are {H} wide")
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  x = x_BLNH.astype(jnp.float32).reshape(B, L, N, H // 2, 2)
  x0, x1 = x[..., 0], x[..., 1]
  rotated = jnp.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)
  return rotated.reshape(B, L, N, H).astype(x_BLNH.dtype)


def grid_ids(grid_h: int, grid_w: int, index: int = 0) -> np.ndarray:
  """(index, row, col) ids of a row-major grid_h x grid_w token grid: (grid_h * grid_w, 3)."""
  rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
  ids = np.stack([np.full_like(rows, index), rows, cols], -1)
  return ids.reshape(-1, 3).astype(np.float32)


def _scale_grid_axes(ids_LA, grid_hw, reference_hw, offset: float):
  """p -> (p + offset) ref / n - offset on the row and col axes (1, 2); index axis kept."""
  ids = jnp.asarray(ids_LA, jnp.float32)
  scale = jnp.array([1.0, reference_hw[0] / grid_hw[0], reference_hw[1] / grid_hw[1]])
  shift = jnp.array([0.0, offset, offset])
  return (ids + shift) * scale - shift


def canonical_ids(ids_LA, grid_hw: tuple[int, int], reference_hw: tuple[int, int]):
  """Resolution-scaled positions: rows/cols of a grid_hw grid mapped onto a reference grid by
  their cell centres, p -> (p + 1/2) ref / n - 1/2, so the centre, the corners and the edges
  keep their coordinates at every resolution."""
  return _scale_grid_axes(ids_LA, grid_hw, reference_hw, 0.5)


def interpolate_ids(ids_LA, grid_hw: tuple[int, int], reference_hw: tuple[int, int]):
  """Position interpolation (Chen et al. 2023): p -> p ref / n, squeezing a larger grid into
  the position range seen in training."""
  return _scale_grid_axes(ids_LA, grid_hw, reference_hw, 0.0)


def ntk_base(base: float, scale: float, dim: int) -> float:
  """NTK-aware base: base * scale^(dim / (dim - 2)) stretches the lowest frequency by `scale`
  while the highest stays put, extending the context without interpolating positions."""
  return base * scale ** (dim / (dim - 2))


def msrope_ids(grid_h: int, grid_w: int, text_len: int) -> tuple[np.ndarray, np.ndarray]:
  """MSRoPE (Qwen-Image) ids (index, row, col) for one image and its text.

  Image tokens sit on a grid centred on 0 (rows -h/2 .. h/2 - 1); text token j sits on the
  diagonal after the image extent, at (s + j, s + j, s + j) with s = max(h, w) / 2, so text
  never collides with an image position and, having equal coordinates on every axis, rotates
  like 1D RoPE over the concatenated frequencies.
  """
  ids = grid_ids(grid_h, grid_w)
  ids[:, 1] -= grid_h // 2
  ids[:, 2] -= grid_w // 2
  start = max(grid_h, grid_w) // 2 + max(grid_h, grid_w) % 2
  text = np.repeat((start + np.arange(text_len, dtype=np.float32))[:, None], 3, axis=1)
  return ids, text
