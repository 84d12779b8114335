"""Blocks of text-conditioned transformers: joint attention (MM-DiT) and its baselines.

  DoubleStreamBlock     SD3 MM-DiT block: text and image keep their own weights (adaLN
                        modulation, q/k/v, output, MLP) and meet in one attention over the
                        concatenated [text; image] sequence.
  SingleStreamBlock     Z-Image style: one adaLN-Zero transformer block over [text; image],
                        both modalities through the same weights.
  ParallelSingleBlock   FLUX single block: attention and MLP computed in parallel from one
                        modulated input (the fused projection [qkv | mlp_in]) and summed.
  CrossAttnBlock        PixArt-style DiT block: adaLN-Zero from the timestep, self-attention
                        over image tokens, then cross-attention from image to text tokens.

Shapes: B batch, S text tokens, T image tokens, L = S + T, D width, N heads, H head width,
F MLP width. Position ids are (B, L, 3) (index, row, col); `mask_BL` is True for valid keys.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from dit_jax.errors import InputError
from dit_jax.nn import axes
from dit_jax.nn.adaln import Modulation, affine_layer_norm, gated_residual, modulate
from dit_jax.nn.attention import QKV, Attention, axial_angles, joint_attention, out_projection
from dit_jax.nn.embed import dense, xavier_uniform
from dit_jax.nn.mlp import Mlp

Dtype = Any


class BlockBase(nn.Module):
  num_heads: int
  mlp_ratio: float = 4.0
  qk_norm: bool = False
  rope_axes_dims: tuple[int, ...] = ()  # (): nn.attention.default_rope_axes_dims
  rope_base: float = 10_000.0
  attention_backend: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def kw(self):
    return dict(dtype=self.dtype, param_dtype=self.param_dtype)

  def attend(self, qkvs, ids_BL3, mask_BL):
    """Joint attention of the streams, RoPE from the ids (None: no rotation)."""
    angles = None
    if ids_BL3 is not None:
      angles = axial_angles(ids_BL3, qkvs[0][0].shape[-1], self.rope_axes_dims, self.rope_base)
    return joint_attention(qkvs, mask_BL, angles=angles, backend=self.attention_backend)

  def out_proj(self, name, features):
    return out_projection(features, name, **self.kw)

  def modulated_attention(self, x_BLD, vec_BD, ids_BL3, mask_BL):
    """The adaLN-Zero self-attention residual (modules "mod", "attn", "attn_out") of a
    one-stream block; returns x and the (shift, scale, gate) left for the MLP."""
    D = x_BLD.shape[-1]
    shift, scale, gate, *mlp_mod = Modulation(D, 6, True, name="mod", **self.kw)(vec_BD)
    qkv = QKV(self.num_heads, self.qk_norm, name="attn", **self.kw)(modulate(x_BLD, shift, scale))
    (a_BLNH,) = self.attend([qkv], ids_BL3, mask_BL)
    return gated_residual(x_BLD, gate, self.out_proj("attn_out", D)(a_BLNH)), mlp_mod

  def mlp_residual(self, x_BLD, shift_BD, scale_BD, gate_BD, name="mlp"):
    m = Mlp(self.mlp_ratio, name=name, **self.kw)(modulate(x_BLD, shift_BD, scale_BD))
    return gated_residual(x_BLD, gate_BD, checkpoint_name(m, "mlp_out"))


class DoubleStreamBlock(BlockBase):
  """(img (B, T, D), txt (B, S, D), vec (B, D)) -> (img, txt). With `text_pre_only` (the last
  SD3 block) the text stream only supplies keys and values: its modulation has 2 chunks
  (shift, scale), it has no output projection and no MLP, and txt is returned unchanged."""
  text_pre_only: bool = False

  @nn.compact
  def __call__(self, img_BTD, txt_BSD, vec_BD, ids_BL3, mask_BL):
    D = img_BTD.shape[-1]
    img_mod = Modulation(D, 6, True, name="img_mod", **self.kw)(vec_BD)
    txt_mod = Modulation(D, 2 if self.text_pre_only else 6, True, name="txt_mod",
                         **self.kw)(vec_BD)
    img_qkv = QKV(self.num_heads, self.qk_norm, name="img_attn", **self.kw)(
        modulate(img_BTD, img_mod[0], img_mod[1]))
    txt_qkv = QKV(self.num_heads, self.qk_norm, name="txt_attn", **self.kw)(
        modulate(txt_BSD, txt_mod[0], txt_mod[1]))
    txt_a, img_a = self.attend([txt_qkv, img_qkv], ids_BL3, mask_BL)
    img_BTD = self._residuals(img_BTD, img_a, img_mod, "img")
    if not self.text_pre_only:
      txt_BSD = self._residuals(txt_BSD, txt_a, txt_mod, "txt")
    return img_BTD, txt_BSD

  def _residuals(self, x_BLD, a_BLNH, mod, prefix):
    _, _, gate1, shift2, scale2, gate2 = mod
    a = checkpoint_name(self.out_proj(f"{prefix}_out", x_BLD.shape[-1])(a_BLNH), "attn_out")
    return self.mlp_residual(gated_residual(x_BLD, gate1, a), shift2, scale2, gate2,
                             f"{prefix}_mlp")


class SingleStreamBlock(BlockBase):
  """adaLN-Zero block over x = [text; image] (B, L, D): shared weights for both modalities."""

  @nn.compact
  def __call__(self, x_BLD, vec_BD, ids_BL3, mask_BL):
    x_BLD, mlp_mod = self.modulated_attention(x_BLD, vec_BD, ids_BL3, mask_BL)
    return self.mlp_residual(x_BLD, *mlp_mod)


class ParallelSingleBlock(BlockBase):
  """FLUX single block: h = modulate(x); [q k v | u] = h [W_qkv | W_in] (the fused projection,
  stored as two column blocks so tensor parallelism splits heads and MLP separately);
  x += gate * ([attn(q, k, v) | gelu(u)] [W_out; W_mlp_out]), one bias."""

  @nn.compact
  def __call__(self, x_BLD, vec_BD, ids_BL3, mask_BL):
    D = x_BLD.shape[-1]
    shift, scale, gate = Modulation(D, 3, True, name="mod", **self.kw)(vec_BD)
    h_BLD = modulate(x_BLD, shift, scale)
    qkv = QKV(self.num_heads, self.qk_norm, name="attn", **self.kw)(h_BLD)
    u_BLF = dense(int(D * self.mlp_ratio), (axes.EMBED, axes.MLP), xavier_uniform(),
                  name="mlp_in", **self.kw)(h_BLD)
    u_BLF = nn.gelu(nn.with_logical_constraint(u_BLF, (axes.BATCH, axes.LENGTH, axes.MLP)),
                    approximate=True)
    (a_BLNH,) = self.attend([qkv], ids_BL3, mask_BL)
    out = self.out_proj("attn_out", D)(a_BLNH)
    out = out + dense(D, (axes.MLP, axes.EMBED), xavier_uniform(), use_bias=False,
                      name="mlp_out", **self.kw)(u_BLF)
    return gated_residual(x_BLD, gate, out)


class CrossAttnBlock(BlockBase):
  """adaLN-Zero self-attention over image tokens (2D RoPE of `ids_BT3`), a pre-LN
  cross-attention to the text tokens (key mask `text_mask_BS`), adaLN-Zero MLP."""

  @nn.compact
  def __call__(self, x_BTD, txt_BSD, vec_BD, ids_BT3, text_mask_BS):
    x_BTD, mlp_mod = self.modulated_attention(x_BTD, vec_BD, ids_BT3, None)
    h = affine_layer_norm("norm_cross", self.param_dtype)(x_BTD).astype(self.dtype)
    cross = Attention(self.num_heads, self.attention_backend, name="cross_attn", **self.kw)
    return self.mlp_residual(x_BTD + cross(h, txt_BSD, text_mask_BS), *mlp_mod)


def check_heads(hidden_size: int, num_heads: int):
  if hidden_size % num_heads or (hidden_size // num_heads) % 2:
    raise InputError(f"hidden_size={hidden_size} must split into num_heads={num_heads} heads of "
                     "even width (RoPE rotates pairs): pick a head count that divides the width")


