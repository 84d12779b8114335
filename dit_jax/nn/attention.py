"""Multi-head attention with a switchable backend.

Shapes: B batch, T query tokens, S key tokens, N heads, H head width, D model width.

Backends (all compute softmax(q k^T / sqrt(H)) v with an optional key padding mask):
  "xla"     einsums + float32 softmax; runs everywhere, the reference.
  "jax"     jax.nn.dot_product_attention, letting JAX pick the implementation.
  "cudnn"   jax.nn.dot_product_attention(implementation="cudnn"): fused flash attention on
            NVIDIA GPUs; needs bfloat16/float16 inputs.
  "splash"  the TPU splash-attention Pallas kernel (interpreted on CPU, for testing).
  "auto"    cudnn on GPU for 16-bit inputs, splash on TPU, xla otherwise.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from dit_jax.nn import axes
from dit_jax.nn.embed import dense, xavier_uniform
from dit_jax.nn.posenc import apply_rope, axial_rope_angles, mixed_frequencies, mixed_rope_angles

Dtype = jnp.dtype
BACKENDS = ("auto", "xla", "jax", "cudnn", "splash")
ROPES = (None, "axial", "mixed")
_SPLASH_BLOCK = 128  # TPU kernel tile along the sequence; sequences are padded to a multiple


def xla_attention(q_BTNH, k_BSNH, v_BSNH, kv_mask_BS=None):
  """Reference attention: explicit scores, softmax in float32."""
  scale = q_BTNH.shape[-1] ** -0.5
  logits_BNTS = jnp.einsum("BTNH,BSNH->BNTS", q_BTNH, k_BSNH,
                           preferred_element_type=jnp.float32) * scale
  if kv_mask_BS is not None:
    logits_BNTS = jnp.where(kv_mask_BS[:, None, None, :], logits_BNTS, -1e30)
  probs_BNTS = jax.nn.softmax(logits_BNTS, axis=-1).astype(v_BSNH.dtype)
  return jnp.einsum("BNTS,BSNH->BTNH", probs_BNTS, v_BSNH)


def jax_nn_attention(q_BTNH, k_BSNH, v_BSNH, kv_mask_BS=None, implementation=None):
  """jax.nn.dot_product_attention; `implementation` None (JAX picks), "xla" or "cudnn"."""
  if implementation == "cudnn" and q_BTNH.dtype not in (jnp.bfloat16, jnp.float16):
    raise ValueError(
        f"attention backend 'cudnn' needs bfloat16 or float16 inputs, got {q_BTNH.dtype}: set "
        "the model's compute dtype to bfloat16, or use attention_backend='xla' or 'auto'")
  mask = None if kv_mask_BS is None else kv_mask_BS[:, None, None, :]
  return jax.nn.dot_product_attention(q_BTNH, k_BSNH, v_BSNH, mask=mask,
                                      implementation=implementation)


@functools.lru_cache(maxsize=64)
def _splash_kernel(num_heads: int, q_len: int, kv_len: int, interpret: bool):
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  mask = sm.MultiHeadMask([sm.FullMask((q_len, kv_len)) for _ in range(num_heads)])
  b = _SPLASH_BLOCK
  sizes = sk.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b,
                        block_kv_dkv=b, block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
  return sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                            interpret=interpret)


def splash_attention(q_BTNH, k_BSNH, v_BSNH, kv_mask_BS=None, interpret=None):
  """TPU splash attention. Sequences are padded to the kernel tile; padded and masked keys
  get segment id 1, all queries segment 0, so no query attends to them."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  if interpret is None:
    interpret = jax.default_backend() != "tpu"
  B, T, N, H = q_BTNH.shape
  S = k_BSNH.shape[1]
  pad = lambda n: -n % _SPLASH_BLOCK
  T_pad, S_pad = T + pad(T), S + pad(S)
  key_valid_BS = jnp.ones((B, S), bool) if kv_mask_BS is None else kv_mask_BS.astype(bool)
  key_valid_BS = jnp.pad(key_valid_BS, ((0, 0), (0, pad(S))))
  to_heads_first = lambda x, n: jnp.pad(x, ((0, 0), (0, n), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
  q_BNTH = to_heads_first(q_BTNH * H ** -0.5, pad(T))  # the kernel does not scale
  k_BNSH = to_heads_first(k_BSNH, pad(S))
  v_BNSH = to_heads_first(v_BSNH, pad(S))
  kernel = _splash_kernel(N, T_pad, S_pad, interpret)
  segments = sk.SegmentIds(q=jnp.zeros((B, T_pad), jnp.int32),
                           kv=jnp.where(key_valid_BS, 0, 1).astype(jnp.int32))
  out_BNTH = jax.vmap(kernel)(q_BNTH, k_BNSH, v_BNSH, segment_ids=segments)
  return out_BNTH.transpose(0, 2, 1, 3)[:, :T]


def resolve_backend(backend: str, dtype) -> str:
  """Turns "auto" into a concrete backend for the current platform and compute dtype."""
  if backend not in BACKENDS:
    raise ValueError(f"attention_backend={backend!r} is not one of {BACKENDS}")
  if backend != "auto":
    return backend
  platform = jax.default_backend()
  if platform == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
    return "cudnn"
  if platform == "tpu":
    return "splash"
  return "xla"


def attention(q_BTNH, k_BSNH, v_BSNH, kv_mask_BS=None, backend: str = "xla"):
  """softmax(q k^T / sqrt(H)) v over heads; `kv_mask_BS` is True where a key may be attended."""
  backend = resolve_backend(backend, q_BTNH.dtype)
  if backend == "xla":
    return xla_attention(q_BTNH, k_BSNH, v_BSNH, kv_mask_BS)
  if backend == "splash":
    return splash_attention(q_BTNH, k_BSNH, v_BSNH, kv_mask_BS)
  impl = "cudnn" if backend == "cudnn" else None
  return jax_nn_attention(q_BTNH, k_BSNH, v_BSNH, kv_mask_BS, implementation=impl)


class Attention(nn.Module):
  """Multi-head self-attention (fused qkv) or, given `context`, cross-attention to it.

  Kernels: qkv (D, 3, N, H), q (D, N, H), kv (D, 2, N, H), out (N, H, D); xavier-uniform over
  the full fan-in/fan-out as in the reference implementations, zero biases.

  Self-attention can rotate q and k by RoPE of `positions` (B, L, 3) (index, row, col) ids:
  "axial" rotates blocks of `rope_axes_dims` features by one coordinate each (default: half
  the head by row, half by col), "mixed" learns (row, col) frequencies per head and layer
  (RoPE-Mixed). `rotate_mask` (B, L) marks the tokens that have a position (others, such as
  appended condition tokens, are not rotated).
  """
  num_heads: int
  backend: str = "xla"
  rope: str | None = None
  rope_axes_dims: tuple[int, ...] = ()
  rope_base: float = 10_000.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def rope_angles(self, positions_BL3, head_dim: int):
    if self.rope == "axial":
      dims = self.rope_axes_dims or (0, head_dim // 2, head_dim // 2)
      if sum(dims) != head_dim or any(d % 2 for d in dims):
        raise ValueError(f"rope_axes_dims={tuple(dims)} must be even and sum to the head width "
                         f"{head_dim}")
      return axial_rope_angles(positions_BL3, dims, self.rope_base)[..., None, :]  # (B,L,1,H/2)
    init = lambda key, shape: mixed_frequencies(
        jax.random.uniform(key, (self.num_heads,), maxval=2 * jnp.pi), head_dim)
    freqs = self.param("rope_freqs", nn.with_logical_partitioning(init, (None, axes.HEADS, None)),
                       (2, self.num_heads, head_dim // 2))
    return mixed_rope_angles(positions_BL3[..., 1:], freqs)  # (B, L, N, H/2)

  @nn.compact
  def __call__(self, x_BTD, context_BSD=None, context_mask_BS=None, positions=None,
               rotate_mask=None):
    D = x_BTD.shape[-1]
    if D % self.num_heads:
      raise ValueError(f"hidden_size={D} is not divisible by num_heads={self.num_heads}")
    if self.rope not in ROPES:
      raise ValueError(f"rope={self.rope!r} is not one of {ROPES}")
    N, H = self.num_heads, D // self.num_heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if context_BSD is None:
      qkv = dense((3, N, H), (axes.EMBED, axes.QKV, axes.HEADS, axes.KV),
                  xavier_uniform(), name="qkv", **kw)(x_BTD)
      q_BTNH, k_BSNH, v_BSNH = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
      if self.rope and positions is not None:
        angles = self.rope_angles(positions, H)
        if rotate_mask is not None:
          angles = angles * rotate_mask[:, :, None, None]
        q_BTNH, k_BSNH = apply_rope(q_BTNH, angles), apply_rope(k_BSNH, angles)
    else:
      q_BTNH = dense((N, H), (axes.EMBED, axes.HEADS, axes.KV), xavier_uniform(),
                     name="q", **kw)(x_BTD)
      kv = dense((2, N, H), (axes.EMBED, axes.QKV, axes.HEADS, axes.KV),
                 xavier_uniform(), name="kv", **kw)(context_BSD.astype(self.dtype))
      k_BSNH, v_BSNH = kv[:, :, 0], kv[:, :, 1]
    q_BTNH = nn.with_logical_constraint(q_BTNH, (axes.BATCH, axes.LENGTH, axes.ACT_HEADS, None))
    out_BTNH = attention(q_BTNH, k_BSNH, v_BSNH, context_mask_BS, self.backend)
    return dense(D, (axes.HEADS, axes.KV, axes.EMBED), xavier_uniform(), axis=(-2, -1),
                 name="out", **kw)(out_BTNH)
