"""A small trainable text encoder for text-to-image models trained with their own tokens.

    enc = TextEncoder(vocab_size=tok.vocab_size, width=128, depth=2, num_heads=4)
    text_BSD, pooled_BD = enc.apply(params, tokens_BS, mask_BS)

Padding (mask False) is never attended to; the empty caption of classifier-free guidance is
BOS then padding (`null_tokens`). Shapes: B batch, S text tokens, D width, N heads.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from dit_jax.errors import InputError
from dit_jax.models.contract import BOS
from dit_jax.nn import axes
from dit_jax.nn.adaln import affine_layer_norm
from dit_jax.nn.attention import Attention
from dit_jax.nn.mlp import Mlp

Dtype = jnp.dtype


def null_tokens(batch: int, length: int) -> tuple[jax.Array, jax.Array]:
  """The empty caption: BOS then padding, (B, S) int32 tokens and (B, S) bool mask."""
  tokens = jnp.zeros((batch, length), jnp.int32).at[:, 0].set(BOS)
  return tokens, jnp.arange(length)[None, :].repeat(batch, 0) < 1


def text_positions(mask_BS: jax.Array) -> jax.Array:
  """(B, S, 3) (index, row, col) ids of 1D text positions: (j, 0, 0) for token j."""
  B, S = mask_BS.shape
  index = jnp.broadcast_to(jnp.arange(S, dtype=jnp.float32), (B, S))
  return jnp.stack([index, jnp.zeros_like(index), jnp.zeros_like(index)], -1)


def masked_mean(x_BSD: jax.Array, mask_BS: jax.Array) -> jax.Array:
  """Mean over the valid tokens (zeros where none is valid), float32."""
  w = mask_BS.astype(jnp.float32)[..., None]
  return (x_BSD.astype(jnp.float32) * w).sum(1) / jnp.maximum(w.sum(1), 1.0)


class TextEncoder(nn.Module):
  """Token embedding + `depth` pre-LN transformer layers with 1D RoPE and a key padding mask.

  (B, S) tokens, (B, S) mask[, (B, S, 3) positions] -> ((B, S, D) tokens, (B, D) pooled), the
  pooled vector being the mean over valid tokens. Positions default to (j, 0, 0); passing
  permuted ids with permuted tokens permutes the outputs the same way.
  """
  vocab_size: int
  width: int = 128
  depth: int = 2
  num_heads: int = 4
  mlp_ratio: float = 4.0
  attention_backend: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens_BS, mask_BS, positions_BS3=None):
    if self.width % self.num_heads or (self.width // self.num_heads) % 2:
      raise InputError(f"text_width={self.width} must split into text_heads={self.num_heads} "
                       "heads of even width")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    table = self.param("embedding", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (axes.VOCAB, axes.EMBED)),
        (self.vocab_size, self.width), self.param_dtype)
    x_BSD = jnp.take(table, jnp.asarray(tokens_BS, jnp.int32), axis=0).astype(self.dtype)
    mask_BS = jnp.asarray(mask_BS, bool)
    positions_BS3 = text_positions(mask_BS) if positions_BS3 is None else positions_BS3
    head_dim = self.width // self.num_heads
    norm = lambda name, x: affine_layer_norm(name, self.param_dtype)(x).astype(self.dtype)
    for i in range(self.depth):
      attn = Attention(self.num_heads, self.attention_backend, rope="axial",
                       rope_axes_dims=(head_dim, 0, 0), name=f"attn_{i}", **kw)
      x_BSD = x_BSD + attn(norm(f"norm1_{i}", x_BSD), context_mask_BS=mask_BS,
                           positions=positions_BS3)
      x_BSD = x_BSD + Mlp(self.mlp_ratio, name=f"mlp_{i}", **kw)(norm(f"norm2_{i}", x_BSD))
    x_BSD = norm("norm_out", x_BSD)
    return x_BSD, masked_mean(x_BSD, mask_BS).astype(self.dtype)
