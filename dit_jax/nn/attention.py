"""Multi-head attention with a switchable backend: the one attention stack of the library.

Shapes: B batch, T query tokens, S key tokens, N heads, H head width, D model width.

Backends (all compute softmax(q k^T / sqrt(H)) v with an optional key padding mask):
  "xla"      einsums + float32 softmax; runs everywhere, the reference.
  "chunked"  the xla computation over chunks of CHUNK queries (lax.map, each chunk
             rematerialised in the backward pass): the score buffer is (B, N, CHUNK, S)
             instead of (B, N, T, S), so long sequences fit on any platform.
  "jax"      jax.nn.dot_product_attention, letting JAX pick the implementation.
  "cudnn"    jax.nn.dot_product_attention(implementation="cudnn"): fused flash attention on
             NVIDIA GPUs; needs bfloat16/float16 inputs.
  "splash"   the TPU splash-attention Pallas kernel (interpreted on CPU, for testing).
  "auto"     cudnn on GPU for 16-bit inputs and heads up to 128 wide, splash on TPU; else xla,
             or chunked once a (batch, head) has more than AUTO_CHUNKED_SCORES scores.

RoPE: q and k are rotated by angles of (index, row, col) position ids. Axial RoPE gives each
axis `rope_axes_dims` features; `()` means `default_rope_axes_dims(H)` everywhere.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from dit_jax.errors import InputError
from dit_jax.nn import axes
from dit_jax.nn.embed import dense, xavier_uniform
from dit_jax.nn.norms import RMSNorm
from dit_jax.nn.posenc import apply_rope, axial_rope_angles, mixed_frequencies, mixed_rope_angles

Dtype = jnp.dtype
BACKENDS = ("auto", "xla", "chunked", "jax", "cudnn", "splash")
ROPES = (None, "axial", "mixed")
CHUNK = 512                       # queries per step of the chunked backend
AUTO_CHUNKED_SCORES = 4096 * 4096  # auto: above this many scores per (batch, head), chunked
CUDNN_MAX_HEAD_DIM = 128           # widest head cuDNN's flash attention takes
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


def chunked_attention(q_BTNH, k_BSNH, v_BSNH, kv_mask_BS=None, chunk: int = CHUNK):
  """xla_attention over query chunks of `chunk` tokens, one at a time (lax.map). Each chunk is
  checkpointed, so the backward pass also holds one chunk's scores, not all of them."""
  B, T, N, H = q_BTNH.shape
  c = min(chunk, T)
  pad = -T % c
  q_BTNH = jnp.pad(q_BTNH, ((0, 0), (0, pad), (0, 0), (0, 0)))
  q_KBcNH = q_BTNH.reshape(B, (T + pad) // c, c, N, H).swapaxes(0, 1)  # K chunks of c queries
  one_chunk = jax.checkpoint(lambda q: xla_attention(q, k_BSNH, v_BSNH, kv_mask_BS))
  out_KBcNH = jax.lax.map(one_chunk, q_KBcNH)
  return out_KBcNH.swapaxes(0, 1).reshape(B, T + pad, N, H)[:, :T]


def jax_nn_attention(q_BTNH, k_BSNH, v_BSNH, kv_mask_BS=None, implementation=None):
  """jax.nn.dot_product_attention; `implementation` None (JAX picks), "xla" or "cudnn"."""
  if implementation == "cudnn" and q_BTNH.dtype not in (jnp.bfloat16, jnp.float16):
    raise InputError(
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
  get segment id 1, all queries segment 0, so no query attends to them. Under a mesh the
  kernel runs per shard (batch and heads as the logical rules split them): XLA cannot split
  a Mosaic kernel itself and would otherwise gather every input onto every chip."""
  if interpret is None:
    interpret = target_platform() != "tpu"
  B, S = k_BSNH.shape[:2]
  key_valid_BS = jnp.ones((B, S), bool) if kv_mask_BS is None else kv_mask_BS.astype(bool)
  local = functools.partial(_splash_local, interpret=interpret)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return local(q_BTNH, k_BSNH, v_BSNH, key_valid_BS)
  batch, heads = nn.logical_to_mesh_axes((axes.BATCH, axes.ACT_HEADS))
  qkv = jax.sharding.PartitionSpec(batch, None, heads, None)
  mask = jax.sharding.PartitionSpec(batch, None)
  return jax.shard_map(local, in_specs=(qkv, qkv, qkv, mask), out_specs=qkv,
                       check_vma=False)(q_BTNH, k_BSNH, v_BSNH, key_valid_BS)


def _splash_local(q_BTNH, k_BSNH, v_BSNH, key_valid_BS, interpret: bool):
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  B, T, N, H = q_BTNH.shape
  S = k_BSNH.shape[1]
  pad = lambda n: -n % _SPLASH_BLOCK
  T_pad, S_pad = T + pad(T), S + pad(S)
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


def target_platform() -> str:
  """The platform the current computation is built for: that of the active mesh (a TPU
  topology when compiling ahead of time on a CPU host), else JAX's default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else mesh.abstract_device
  return device.platform if device is not None else jax.default_backend()


def resolve_backend(backend: str, dtype, head_dim: int = 0, num_scores: int = 0) -> str:
  """Turns "auto" into a concrete backend for the platform, the compute dtype, the head width
  and the number of scores per (batch, head) T * S (0: short)."""
  if backend not in BACKENDS:
    raise InputError(f"attention_backend={backend!r} is not one of {BACKENDS}")
  if backend != "auto":
    return backend
  platform = target_platform()
  if (platform == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
      and head_dim <= CUDNN_MAX_HEAD_DIM):
    return "cudnn"
  if platform == "tpu":
    return "splash"
  return "chunked" if num_scores > AUTO_CHUNKED_SCORES else "xla"


def attention(q_BTNH, k_BSNH, v_BSNH, kv_mask_BS=None, backend: str = "xla"):
  """softmax(q k^T / sqrt(H)) v over heads; `kv_mask_BS` is True where a key may be attended."""
  backend = resolve_backend(backend, q_BTNH.dtype, q_BTNH.shape[-1],
                            q_BTNH.shape[1] * k_BSNH.shape[1])
  if backend == "xla":
    return xla_attention(q_BTNH, k_BSNH, v_BSNH, kv_mask_BS)
  if backend == "chunked":
    return chunked_attention(q_BTNH, k_BSNH, v_BSNH, kv_mask_BS)
  if backend == "splash":
    return splash_attention(q_BTNH, k_BSNH, v_BSNH, kv_mask_BS)
  impl = "cudnn" if backend == "cudnn" else None
  return jax_nn_attention(q_BTNH, k_BSNH, v_BSNH, kv_mask_BS, implementation=impl)


# --- RoPE on q and k ------------------------------------------------------------------------
def default_rope_axes_dims(head_dim: int) -> tuple[int, int, int]:
  """(index, row, col) features of axial RoPE: 7/16 of the head to each of row and col (even),
  the rest to the index axis; (16, 56, 56) for FLUX's 128-wide heads."""
  rc = (head_dim * 7 // 16) // 2 * 2
  return (head_dim - 2 * rc, rc, rc)


def rope_axes_dims_for(head_dim: int, rope_axes_dims=()) -> tuple[int, ...]:
  """The axial split to use ((): the default), checked against the head width."""
  dims = tuple(rope_axes_dims) or default_rope_axes_dims(head_dim)
  if sum(dims) != head_dim or any(d % 2 for d in dims):
    raise InputError(f"rope_axes_dims={dims} must be even and sum to the head width {head_dim}")
  return dims


def axial_angles(ids_BL3, head_dim: int, rope_axes_dims=(), base: float = 10_000.0):
  """(B, L, 3) ids -> (B, L, 1, H/2) axial RoPE angles shared by all heads."""
  dims = rope_axes_dims_for(head_dim, rope_axes_dims)
  return axial_rope_angles(ids_BL3, dims, base)[:, :, None, :]


def attend(q_BTNH, k_BSNH, v_BSNH, kv_mask_BS=None, *, angles=None, backend: str = "xla"):
  """Attention with q and k rotated by RoPE `angles` (broadcastable to (B, T, N, H/2);
  None: no rotation, and the only choice for cross-attention, where T != S)."""
  if angles is not None:
    q_BTNH, k_BSNH = apply_rope(q_BTNH, angles), apply_rope(k_BSNH, angles)
  return attention(q_BTNH, k_BSNH, v_BSNH, kv_mask_BS, backend)


def joint_attention(qkvs, mask_BL=None, *, angles=None, backend: str = "xla"):
  """One attention over the concatenation of several streams' (q, k, v), each (B, L_i, N, H),
  in the given order (angles cover the concatenated length); returns the per-stream outputs
  (B, L_i, N, H): every query sees every valid key of every stream (MM-DiT)."""
  lengths = [q.shape[1] for q, _, _ in qkvs]
  q, k, v = (jnp.concatenate([s[i] for s in qkvs], axis=1) for i in range(3))
  out_BLNH = attend(q, k, v, mask_BL, angles=angles, backend=backend)
  splits = [sum(lengths[:i + 1]) for i in range(len(lengths) - 1)]
  return jnp.split(out_BLNH, splits, axis=1)


# --- projections ----------------------------------------------------------------------------
def project_qkv(x_BLD, num_heads: int, qk_norm: bool, *, dtype, param_dtype):
  """x (B, L, D) -> q, k, v (B, L, N, H) from one fused kernel (D, 3, N, H) named "qkv" in
  the calling module; optional per-head RMSNorm of q and k ("q_norm", "k_norm": SD3.5/FLUX)."""
  D = x_BLD.shape[-1]
  if D % num_heads:
    raise InputError(f"hidden_size={D} is not divisible by num_heads={num_heads}")
  N, H = num_heads, D // num_heads
  qkv = dense((3, N, H), (axes.EMBED, axes.QKV, axes.HEADS, axes.KV), xavier_uniform(),
              name="qkv", dtype=dtype, param_dtype=param_dtype)(x_BLD)
  q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
  if qk_norm:
    q = RMSNorm(param_dtype=param_dtype, name="q_norm")(q)
    k = RMSNorm(param_dtype=param_dtype, name="k_norm")(k)
  return q, k, v


def out_projection(features: int, name: str, *, dtype, param_dtype):
  """(B, L, N, H) -> (B, L, D): the attention output projection."""
  return dense(features, (axes.HEADS, axes.KV, axes.EMBED), xavier_uniform(), axis=(-2, -1),
               name=name, dtype=dtype, param_dtype=param_dtype)


class QKV(nn.Module):
  """project_qkv as a module (its own name scope), for blocks that attend jointly."""
  num_heads: int
  qk_norm: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BLD):
    return project_qkv(x_BLD, self.num_heads, self.qk_norm, dtype=self.dtype,
                       param_dtype=self.param_dtype)


class Attention(nn.Module):
  """Multi-head self-attention (fused qkv) or, given `context`, cross-attention to it.

  Kernels: qkv (D, 3, N, H), q (D, N, H), kv (D, 2, N, H), out (N, H, D); xavier-uniform over
  the full fan-in/fan-out as in the reference implementations, zero biases.

  Self-attention can rotate q and k by RoPE of `positions` (B, L, 3) (index, row, col) ids:
  "axial" rotates blocks of `rope_axes_dims` features by one coordinate each (default:
  default_rope_axes_dims), "mixed" learns (row, col) frequencies per head and layer
  (RoPE-Mixed). `rotate_mask` (B, L) marks the tokens that have a position (others, such as
  appended condition tokens, are not rotated).
  """
  num_heads: int
  backend: str = "xla"
  rope: str | None = None
  rope_axes_dims: tuple[int, ...] = ()
  rope_base: float = 10_000.0
  qk_norm: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def rope_angles(self, positions_BL3, head_dim: int):
    if self.rope == "axial":
      return axial_angles(positions_BL3, head_dim, self.rope_axes_dims, self.rope_base)
    init = lambda key, shape: mixed_frequencies(
        jax.random.uniform(key, (self.num_heads,), maxval=2 * jnp.pi), head_dim)
    freqs = self.param("rope_freqs", nn.with_logical_partitioning(init, (None, axes.HEADS, None)),
                       (2, self.num_heads, head_dim // 2))
    return mixed_rope_angles(positions_BL3[..., 1:], freqs)  # (B, L, N, H/2)

  @nn.compact
  def __call__(self, x_BTD, context_BSD=None, context_mask_BS=None, positions=None,
               rotate_mask=None):
    D = x_BTD.shape[-1]
    if self.rope not in ROPES:
      raise InputError(f"rope={self.rope!r} is not one of {ROPES}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    angles = None
    if context_BSD is None:
      q_BTNH, k_BSNH, v_BSNH = project_qkv(x_BTD, self.num_heads, self.qk_norm, **kw)
      if self.rope and positions is not None:
        angles = self.rope_angles(positions, q_BTNH.shape[-1])
        if rotate_mask is not None:
          angles = angles * rotate_mask[:, :, None, None]
    else:
      if D % self.num_heads:
        raise InputError(f"hidden_size={D} is not divisible by num_heads={self.num_heads}")
      N, H = self.num_heads, D // self.num_heads
      q_BTNH = dense((N, H), (axes.EMBED, axes.HEADS, axes.KV), xavier_uniform(),
                     name="q", **kw)(x_BTD)
      kv = dense((2, N, H), (axes.EMBED, axes.QKV, axes.HEADS, axes.KV),
                 xavier_uniform(), name="kv", **kw)(context_BSD.astype(self.dtype))
      k_BSNH, v_BSNH = kv[:, :, 0], kv[:, :, 1]
    q_BTNH = nn.with_logical_constraint(q_BTNH, (axes.BATCH, axes.LENGTH, axes.ACT_HEADS, None))
    out_BTNH = attend(q_BTNH, k_BSNH, v_BSNH, context_mask_BS, angles=angles,
                      backend=self.backend)
    return out_projection(D, "out", **kw)(out_BTNH)
