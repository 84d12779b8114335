"""DiT: the Diffusion Transformer of Peebles & Xie (2023), with the four block designs of its
ablation (adaLN-Zero, adaLN, cross-attention, in-context conditioning) on one backbone.

    model = dit("DiT-XL/2", num_classes=1000)
    params = model.init(rng, x_BHWC, t_B, {"label": y_B})
    out_BHWC = model.apply(params, x_BHWC, t_B, {"label": y_B})

Shapes: B batch, H/W image, C channels, p patch, T = HW/p^2 image tokens, S condition tokens,
D width. The output has C channels, or 2C with `learn_sigma` (the first C are the prediction,
the last C the variance interpolation of the original).
"""
import re
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from dit_jax.errors import InputError
from dit_jax.models import flops
from dit_jax.models.contract import (TIME_INPUTS, DerivedContract, check_options, cond_spec,
                                     model_time)
from dit_jax.nn import axes
from dit_jax.nn.adaln import Modulation, affine_layer_norm, gated_residual, modulate
from dit_jax.nn.attention import BACKENDS, Attention
from dit_jax.nn.embed import (LabelEmbedder, TimestepEmbedder, dense, patchify, unpatchify,
                              xavier_uniform)
from dit_jax.nn.mlp import Mlp
from dit_jax.nn.posenc import add_sincos_2d, canonical_ids, grid_ids, interpolate_ids
from dit_jax.nn.stack import REMAT_POLICIES, check_remat_policy, layer_stack  # noqa: F401

Dtype = Any

# depth, hidden size, heads (Table 1 of the DiT paper).
SIZES = {
    "S": dict(depth=12, hidden_size=384, num_heads=6),
    "B": dict(depth=12, hidden_size=768, num_heads=12),
    "L": dict(depth=24, hidden_size=1024, num_heads=16),
    "XL": dict(depth=28, hidden_size=1152, num_heads=16),
}
PATCH_SIZES = (2, 4, 8)
PRESETS = tuple(f"DiT-{s}/{p}" for s in SIZES for p in PATCH_SIZES)

CONDITIONINGS = ("adaln_zero", "adaln", "cross_attn", "in_context")
# How position reaches attention: added sin-cos table, or RoPE of (index, row, col) ids.
POSENCS = ("sincos", "rope_axial", "rope_mixed", "rope_scaled", "none")
ROPE_OF_POSENC = {"rope_axial": "axial", "rope_scaled": "axial", "rope_mixed": "mixed"}
ROPE_SCALINGS = ("canonical", "interpolate")


def preset(name: str) -> dict:
  """'DiT-XL/2' (or 'XL/2') -> dict(depth, hidden_size, num_heads, patch_size)."""
  match = re.fullmatch(r"(?:DiT-)?(S|B|L|XL)/(\d+)", name)
  if not match:
    raise InputError(f"unknown DiT model name {name!r}: expected 'DiT-<size>/<patch>' with size "
                     f"in {tuple(SIZES)}, e.g. 'DiT-XL/2'")
  return dict(SIZES[match[1]], patch_size=int(match[2]))


def dit(name: str, **overrides) -> "DiT":
  """A DiT by name ('DiT-B/4'), with any field overridden (num_classes, conditioning, dtype...)."""
  return DiT(**{**preset(name), **overrides})


class DiTBlock(nn.Module):
  """One transformer block; `conditioning` picks how c (B, D) or the tokens (B, S, D) enter.

  adaln_zero  x += gate * Op(LN(x)(1 + scale) + shift), modulation zero-initialised
  adaln       x += Op(LN(x)(1 + scale) + shift), no gate, modulation xavier-initialised
  cross_attn  pre-LN block with a cross-attention to the condition tokens after self-attention
  in_context  plain pre-LN ViT block (the condition tokens are already in the sequence)
  """
  num_heads: int
  mlp_ratio: float = 4.0
  conditioning: str = "adaln_zero"
  attention_backend: str = "xla"
  rope: str | None = None          # None | "axial" | "mixed", see nn.attention.Attention
  rope_axes_dims: tuple[int, ...] = ()
  rope_base: float = 10_000.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BTD, c_BD, cond_BSD, positions_BT3=None, rotate_mask_BT=None):
    D = x_BTD.shape[-1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self_attn = Attention(self.num_heads, self.attention_backend, rope=self.rope,
                          rope_axes_dims=self.rope_axes_dims, rope_base=self.rope_base,
                          name="attn", **kw)
    attn = lambda y: self_attn(y, positions=positions_BT3, rotate_mask=rotate_mask_BT)
    mlp = Mlp(self.mlp_ratio, name="mlp", **kw)
    x_BTD = nn.with_logical_constraint(x_BTD, (axes.BATCH, axes.LENGTH, axes.ACT_EMBED))

    if self.conditioning == "adaln_zero":
      shift1, scale1, gate1, shift2, scale2, gate2 = Modulation(D, 6, True, name="adaLN",
                                                                **kw)(c_BD)
      a = checkpoint_name(attn(modulate(x_BTD, shift1, scale1)), "attn_out")
      x_BTD = gated_residual(x_BTD, gate1, a)
      m = checkpoint_name(mlp(modulate(x_BTD, shift2, scale2)), "mlp_out")
      return gated_residual(x_BTD, gate2, m)

    if self.conditioning == "adaln":
      shift1, scale1, shift2, scale2 = Modulation(D, 4, False, name="adaLN", **kw)(c_BD)
      x_BTD = x_BTD + checkpoint_name(attn(modulate(x_BTD, shift1, scale1)), "attn_out")
      return x_BTD + checkpoint_name(mlp(modulate(x_BTD, shift2, scale2)), "mlp_out")

    norm = lambda name, x: affine_layer_norm(name, self.param_dtype)(x).astype(self.dtype)
    x_BTD = x_BTD + checkpoint_name(attn(norm("norm1", x_BTD)), "attn_out")
    if self.conditioning == "cross_attn":
      cross = Attention(self.num_heads, self.attention_backend, name="cross_attn", **kw)
      x_BTD = x_BTD + cross(norm("norm_cross", x_BTD), cond_BSD)
    return x_BTD + checkpoint_name(mlp(norm("norm2", x_BTD)), "mlp_out")


class FinalLayer(nn.Module):
  """(adaptive) LayerNorm then a zero-initialised linear to p*p*out_channels per token."""
  patch_size: int
  out_channels: int
  adaptive: bool = True
  zero_init_modulation: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BTD, c_BD):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if self.adaptive:
      shift, scale = Modulation(x_BTD.shape[-1], 2, self.zero_init_modulation, name="adaLN",
                                **kw)(c_BD)
      x_BTD = modulate(x_BTD, shift, scale)
    else:
      x_BTD = affine_layer_norm("norm", self.param_dtype)(x_BTD).astype(self.dtype)
    features = self.patch_size ** 2 * self.out_channels
    return dense(features, (axes.EMBED, axes.PATCH), nn.initializers.zeros, name="linear",
                 **kw)(x_BTD)


class DiT(DerivedContract, nn.Module):
  """Diffusion Transformer on NHWC images (or latents); see the module docstring."""
  patch_size: int = 2
  hidden_size: int = 1152
  depth: int = 28
  num_heads: int = 16
  mlp_ratio: float = 4.0
  num_classes: int = 1000          # 0: unconditional (time only)
  class_dropout_prob: float = 0.1  # label -> null class in training, for guidance
  learn_sigma: bool = True         # output 2C channels as the original DiT
  conditioning: str = "adaln_zero"  # one of CONDITIONINGS
  posenc: str = "sincos"           # one of POSENCS
  rope_base: float = 10_000.0      # RoPE frequencies base^(-2i/d) (NTK: posenc.ntk_base)
  rope_axes_dims: tuple[int, ...] = ()  # features per (index, row, col); () = default
  rope_reference_size: int = 0     # rope_scaled: token grid side that positions map onto
  rope_scaling: str = "canonical"  # rope_scaled: "canonical" (centres) or "interpolate"
  attention_backend: str = "xla"   # one of attention.BACKENDS
  time_scale: float = 1000.0       # t in [0, 1] is embedded as t * time_scale
  time_input: str = "unit"         # contract.TIME_INPUTS; 'ddpm_step': published checkpoints
  num_ddpm_steps: int = 1000       # ddpm_step: the N of step n = N (1 - t) - 1
  dtype: Dtype = jnp.float32       # compute dtype (bfloat16 on accelerators)
  param_dtype: Dtype = jnp.float32
  scan_layers: bool = False        # one compiled block scanned over depth
  remat_policy: str = "none"       # one of nn.stack.REMAT_POLICIES

  def check_config(self, height: int | None = None, width: int | None = None):
    """Raises ValueError naming the field and the fix for an inconsistent configuration."""
    if self.hidden_size % self.num_heads:
      raise InputError(f"hidden_size={self.hidden_size} is not divisible by num_heads="
                       f"{self.num_heads}: pick a head count that divides the width")
    if self.hidden_size % 4:
      raise InputError(f"hidden_size={self.hidden_size} must be divisible by 4 for the 2D "
                       "sin-cos position embedding")
    check_options(self, ("conditioning", CONDITIONINGS), ("posenc", POSENCS),
                  ("attention_backend", BACKENDS), ("time_input", TIME_INPUTS))
    if self.posenc == "rope_scaled" and (self.rope_reference_size < 1
                                         or self.rope_scaling not in ROPE_SCALINGS):
      raise InputError(f"posenc='rope_scaled' needs rope_reference_size > 0 (the token grid "
                       f"side positions map onto, e.g. the training grid; got "
                       f"{self.rope_reference_size}) and rope_scaling in {ROPE_SCALINGS}")
    check_remat_policy(self.remat_policy)
    if height is not None and (height % self.patch_size or width % self.patch_size):
      raise InputError(f"input {height}x{width} is not divisible by patch_size={self.patch_size}:"
                       f" use an image size that is a multiple of {self.patch_size} or another "
                       "patch size")

  # The model contract (dit_jax.models.contract.Denoiser).
  @property
  def condition_spec(self) -> dict:
    return {"label": cond_spec("label")} if self.num_classes else {}

  def null_condition(self, cond: dict | None) -> dict | None:
    """The unconditional `cond` for classifier-free guidance: the null class."""
    if cond is None:
      return None
    return dict(cond, label=jnp.full_like(cond["label"], self.num_classes))

  def forward_flops(self, height: int, width: int, channels: int) -> dict[str, int]:
    return flops.dit_flops(self, height, width, channels)

  def param_counts(self, height: int, width: int, channels: int) -> dict[str, int]:
    return flops.dit_params(self, channels)

  def attention_shapes(self, height: int, width: int, channels: int):
    tokens = (height // self.patch_size) * (width // self.patch_size)
    return ((self.hidden_size // self.num_heads, tokens * tokens),)

  def condition(self, t_B, cond, train):
    """The conditioning vector c (B, D) and the condition tokens (B, S, D), S = 1 or 2."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    t_emb_BD = TimestepEmbedder(self.hidden_size, time_scale=self.time_scale, name="t_embedder",
                                **kw)(model_time(t_B, self.time_input, self.num_ddpm_steps))
    if not self.num_classes:
      return t_emb_BD, t_emb_BD[:, None]
    if cond is None or "label" not in cond:
      raise InputError(f"this DiT is class-conditional (num_classes={self.num_classes}): pass "
                       "cond={'label': labels} (label num_classes is the null class), or set "
                       "num_classes=0 for an unconditional model")
    y_emb_BD = LabelEmbedder(self.num_classes, self.hidden_size, self.class_dropout_prob,
                             name="y_embedder", **kw)(cond["label"], train=train)
    return t_emb_BD + y_emb_BD, jnp.stack([t_emb_BD, y_emb_BD], axis=1)

  def positions(self, cond, batch: int, grid_h: int, grid_w: int):
    """(B, T, 3) (index, row, col) ids for RoPE: cond['pos_ids'] if given, else the grid;
    mapped onto the reference grid for rope_scaled. None when RoPE is off."""
    if self.posenc not in ROPE_OF_POSENC:
      return None
    ids = cond.get("pos_ids") if cond else None
    ids = jnp.asarray(grid_ids(grid_h, grid_w))[None] if ids is None else jnp.asarray(ids)
    if self.posenc == "rope_scaled":
      scale = canonical_ids if self.rope_scaling == "canonical" else interpolate_ids
      ref = (self.rope_reference_size, self.rope_reference_size)
      ids = scale(ids, (grid_h, grid_w), ref)
    return jnp.broadcast_to(ids.astype(jnp.float32), (batch, grid_h * grid_w, 3))

  def blocks(self, x_BTD, c_BD, cond_BSD, positions_BT3, rotate_mask_BT):
    block_kw = dict(num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
                    conditioning=self.conditioning, attention_backend=self.attention_backend,
                    rope=ROPE_OF_POSENC.get(self.posenc), rope_axes_dims=self.rope_axes_dims,
                    rope_base=self.rope_base, dtype=self.dtype, param_dtype=self.param_dtype)
    run = layer_stack(DiTBlock, block_kw, self.depth, scan=self.scan_layers,
                      remat_policy=self.remat_policy, name="blocks")
    return run(x_BTD, c_BD, cond_BSD, positions_BT3, rotate_mask_BT)

  @nn.compact
  def __call__(self, x_BHWC, t_B, cond: dict | None = None, *, train: bool = False):
    """x (B, H, W, C), t (B,) or scalar in [0, 1], cond {'label': (B,) int, optional
    'pos_ids': (B, T, 3) RoPE ids} -> (B, H, W, C')."""
    B, H, W, C = x_BHWC.shape
    self.check_config(H, W)
    p = self.patch_size
    t_B = jnp.broadcast_to(jnp.asarray(t_B, jnp.float32), (B,))
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

    x_BTD = dense(self.hidden_size, (axes.PATCH, axes.EMBED), xavier_uniform(), name="x_embedder",
                  **kw)(patchify(x_BHWC.astype(self.dtype), p))
    if self.posenc == "sincos":
      x_BTD = add_sincos_2d(x_BTD, H // p, W // p)
    positions_BT3 = self.positions(cond, B, H // p, W // p)
    c_BD, cond_BSD = self.condition(t_B, cond, train)

    T, rotate_mask_BT = x_BTD.shape[1], None
    if self.conditioning == "in_context":
      x_BTD = jnp.concatenate([x_BTD, cond_BSD.astype(x_BTD.dtype)], axis=1)
      if positions_BT3 is not None:  # condition tokens carry no position: not rotated
        S = cond_BSD.shape[1]
        positions_BT3 = jnp.pad(positions_BT3, ((0, 0), (0, S), (0, 0)))
        rotate_mask_BT = jnp.arange(T + S)[None, :] < T
    x_BTD = self.blocks(x_BTD, c_BD, cond_BSD, positions_BT3, rotate_mask_BT)
    x_BTD = x_BTD[:, :T]

    adaptive = self.conditioning in ("adaln_zero", "adaln")
    out_BTP = FinalLayer(p, self.output_channels(C), adaptive, self.conditioning == "adaln_zero",
                         name="final_layer", **kw)(x_BTD, c_BD)
    return unpatchify(out_BTP, p, H, W).astype(jnp.float32)
