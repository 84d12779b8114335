"""Text for text-to-image models: tokenizers, a small trainable text encoder, and precomputed
embeddings of a large frozen encoder.

    tok = make_tokenizer("words:shapes")             # or "bytes"
    tokens_BS, mask_BS = tok.encode_batch(captions, length=24)
    enc = TextEncoder(vocab_size=tok.vocab_size, width=128, depth=2, num_heads=4)
    text_BSD, pooled_BD = enc.apply(params, tokens_BS, mask_BS)

Every encoded caption starts with BOS, so the empty caption (the unconditional branch of
classifier-free guidance) is one BOS token and padding: `null_tokens(batch, length)`.
Padding (id 0) is marked False in the mask and never attended to.

Precomputed embeddings (T5 / CLIP features the user computed elsewhere) live in an .npz with
'text' (N, S, Dc) float, 'text_mask' (N, S) bool and optionally 'pooled' (N, Dp); see
`load_text_embeddings`.

Shapes: B batch, S text tokens, D width, N heads.
"""
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.nn import axes
from dit_jax.nn.adaln import affine_layer_norm
from dit_jax.nn.attention import Attention
from dit_jax.nn.mlp import Mlp

PAD, BOS, UNK = 0, 1, 2
Dtype = jnp.dtype


class WordTokenizer:
  """Lower-case words (letters/digits runs) from a fixed vocabulary; ids 0 pad, 1 BOS, 2 unk."""

  def __init__(self, words):
    self.words = tuple(dict.fromkeys(words))
    self.ids = {w: i + 3 for i, w in enumerate(self.words)}
    self.vocab_size = len(self.words) + 3

  def split(self, text: str) -> list[int]:
    return [self.ids.get(w, UNK) for w in re.findall(r"[a-z0-9]+", text.lower())]

  def encode(self, text: str, length: int) -> tuple[np.ndarray, np.ndarray]:
    return _pad([BOS, *self.split(text)], length, text)

  def encode_batch(self, texts, length: int) -> tuple[np.ndarray, np.ndarray]:
    pairs = [self.encode(t, length) for t in texts]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


class ByteTokenizer(WordTokenizer):
  """UTF-8 bytes: ids 0 pad, 1 BOS, 2 unused, 3 + byte."""

  def __init__(self):
    self.words = ()
    self.vocab_size = 256 + 3

  def split(self, text: str) -> list[int]:
    return [b + 3 for b in text.encode("utf-8")]


def _pad(ids: list[int], length: int, text: str) -> tuple[np.ndarray, np.ndarray]:
  if len(ids) > length:
    raise ValueError(f"caption {text!r} needs {len(ids)} tokens (with BOS) but the text length "
                     f"is {length}: raise data.text_length / model.text_length")
  tokens = np.zeros((length,), np.int32)
  tokens[:len(ids)] = ids
  return tokens, np.arange(length) < len(ids)


def shapes_vocabulary() -> list[str]:
  """Every word a `shapes` caption can use."""
  from dit_jax.data.shapes import COLOUR_NAMES, POSITIONS, SHAPES  # lazy: imports TFDS
  words = ["a", "and", *COLOUR_NAMES, *SHAPES]
  for row in POSITIONS:
    for phrase in row:
      words += phrase.split()
  return words


TOKENIZERS = ("words:shapes", "bytes")


def make_tokenizer(name: str) -> WordTokenizer:
  """'words:shapes' (word-level, the shapes captions' vocabulary) or 'bytes' (UTF-8)."""
  if name == "words:shapes":
    return WordTokenizer(shapes_vocabulary())
  if name == "bytes":
    return ByteTokenizer()
  raise ValueError(f"text tokenizer {name!r} is not one of {TOKENIZERS}")


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
      raise ValueError(f"text_width={self.width} must split into text_heads={self.num_heads} "
                       "heads of even width")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    table = self.param("embedding", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (axes.VOCAB, axes.EMBED)),
        (self.vocab_size, self.width), self.param_dtype)
    x_BSD = jnp.take(table, jnp.asarray(tokens_BS, jnp.int32), axis=0).astype(self.dtype)
    mask_BS = jnp.asarray(mask_BS, bool)
    positions_BS3 = text_positions(mask_BS) if positions_BS3 is None else positions_BS3
    head_dim = self.width // self.num_heads
    for i in range(self.depth):
      attn = Attention(self.num_heads, self.attention_backend, rope="axial",
                       rope_axes_dims=(head_dim, 0, 0), name=f"attn_{i}", **kw)
      h = affine_layer_norm(f"norm1_{i}", self.param_dtype)(x_BSD).astype(self.dtype)
      x_BSD = x_BSD + attn(h, context_mask_BS=mask_BS, positions=positions_BS3)
      h = affine_layer_norm(f"norm2_{i}", self.param_dtype)(x_BSD).astype(self.dtype)
      x_BSD = x_BSD + Mlp(self.mlp_ratio, name=f"mlp_{i}", **kw)(h)
    x_BSD = affine_layer_norm("norm_out", self.param_dtype)(x_BSD).astype(self.dtype)
    return x_BSD, masked_mean(x_BSD, mask_BS).astype(self.dtype)


def load_text_embeddings(path, pooled_dim: int | None = None) -> dict[str, np.ndarray]:
  """Reads precomputed text features: an .npz with 'text' (N, S, Dc), 'text_mask' (N, S) and
  optionally 'pooled' (N, Dp). Returns them as a dict of arrays whose rows are the cond of
  example i (`{k: v[i]}`), ready for a model with text_source='embeddings'."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"text embeddings {path} not found: compute them with your frozen "
                            "encoder and save np.savez(path, text=..., text_mask=..., pooled=...)")
  with np.load(path) as f:
    out = {k: f[k] for k in ("text", "text_mask", "pooled") if k in f}
  if "text" not in out or out["text"].ndim != 3:
    raise ValueError(f"{path}: needs 'text' of shape (N, S, Dc)")
  n, s, _ = out["text"].shape
  mask = out.get("text_mask", np.ones((n, s), bool))
  if mask.shape != (n, s):
    raise ValueError(f"{path}: 'text_mask' has shape {mask.shape}, expected {(n, s)}")
  out["text_mask"] = mask.astype(bool)
  if pooled_dim and ("pooled" not in out or out["pooled"].shape != (n, pooled_dim)):
    raise ValueError(f"{path}: the model has pooled_dim={pooled_dim} and needs 'pooled' of "
                     f"shape {(n, pooled_dim)}; got {out.get('pooled', np.empty(0)).shape}")
  out["text"] = out["text"].astype(np.float32)
  return out
