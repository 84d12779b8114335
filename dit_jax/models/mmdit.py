"""Text-to-image transformers: MM-DiT (joint attention) and text-conditioned DiT baselines.

adaLN applies one modulation to every patch, so pooled text cannot tell the patch on the right
edge to become a circle and the patch in the centre a square; joint attention lets each patch
attend to each word. One backbone, `MMDiT`, covers the published layouts:

  SD3          `depth_double` double-stream blocks, the last one's text stream reduced to keys
               and values (`reduce_last_text`), fixed 2D sin-cos positions, no RoPE
  Qwen-Image   double-stream blocks with MSRoPE ids (text on the diagonal after the image)
  Z-Image      `depth_single` sequential single-stream blocks (shared weights for both)
  FLUX         double-stream blocks, then single-stream blocks whose attention and MLP run in
               parallel; 3-axis RoPE with text ids 0; guidance embedding (FLUX.1-dev);
               conditioning-image tokens with index id 1 (`image_conditioning`, Kontext)

`TextDiT` is the DiT baseline: pooled text through adaLN only, or cross-attention to text.

    model = mmdit("FLUX.1-dev")
    out = model.apply(params, x_BHWC, t_B, {"text": ctx_BSC, "text_mask": m_BS,
                                             "pooled": y_BP, "guidance": g_B})

Text comes either as tokens for a small encoder trained with the model (`text_source`
'tokens': cond 'text_tokens' (B, S) int32, 'text_mask' (B, S) bool) or as precomputed features
of a frozen encoder ('embeddings': cond 'text' (B, S, context_dim), 'text_mask', and 'pooled'
(B, pooled_dim) when pooled_dim > 0). Optional cond keys: 'text_ids' (B, S, 3) RoPE ids of the
text tokens, 'cond_image' (B, H', W', C) for `image_conditioning`.

Shapes: B batch, S text tokens, T image tokens, D width, P = p*p*C patch features.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dit_jax.errors import InputError
from dit_jax.models import flops, text_encoder as text_lib
from dit_jax.models.contract import (DerivedContract, check_options, cond_spec,
                                     example_condition)
from dit_jax.models.dit import DiTBlock, FinalLayer
from dit_jax.models.mmdit_blocks import (CrossAttnBlock, DoubleStreamBlock, ParallelSingleBlock,
                                         SingleStreamBlock, check_heads)
from dit_jax.nn import axes
from dit_jax.nn.attention import BACKENDS, rope_axes_dims_for
from dit_jax.nn.embed import TimestepEmbedder, dense, patchify, unpatchify, xavier_uniform
from dit_jax.nn.posenc import add_sincos_2d, grid_ids, msrope_ids
from dit_jax.nn.stack import check_remat_policy, layer_stack

Dtype = Any
TEXT_SOURCES = ("tokens", "embeddings")
IMAGE_POSENCS = ("rope", "sincos")
TEXT_POSENCS = ("1d", "zeros", "msrope")
SINGLE_BLOCKS = ("parallel", "sequential")
TEXT_CONDITIONINGS = ("pooled_adaln", "cross_attn")
TEXT_KEYS = ("text_tokens", "text_mask", "text", "pooled")  # what caption dropout replaces


class MLPEmbedder(nn.Module):
  """(B, K) -> Linear -> SiLU -> Linear -> (B, D): the pooled-text and guidance embedders."""
  hidden_size: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, y_BK):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    init = nn.initializers.normal(0.02)
    h = dense(self.hidden_size, (None, axes.EMBED), init, name="in", **kw)(y_BK)
    return dense(self.hidden_size, (axes.MLP, axes.EMBED), init, name="out", **kw)(nn.silu(h))


class TextConditioned(DerivedContract, nn.Module):
  """Fields and the condition interface shared by MMDiT and TextDiT (see module docstring)."""
  patch_size: int = 2
  hidden_size: int = 256
  num_heads: int = 4
  mlp_ratio: float = 4.0
  learn_sigma: bool = False
  text_source: str = "tokens"      # one of TEXT_SOURCES
  vocab_size: int = 0              # tokens: tokenizer's vocabulary (text.make_tokenizer)
  text_length: int = 32            # tokens per caption, padding included
  text_width: int = 128            # tokens: width of the trained text encoder
  text_depth: int = 2              # tokens: its transformer layers
  text_heads: int = 4
  context_dim: int = 4096          # embeddings: feature width of the frozen encoder (T5: 4096)
  pooled_dim: int = 0              # embeddings: pooled vector width (CLIP-L 768), 0: none
  use_pooled: bool = True          # pooled text joins the timestep in the adaLN vector
  text_dropout_prob: float = 0.1   # caption -> empty caption in training (for guidance)
  guidance_embed: bool = False     # FLUX.1-dev: cond 'guidance' (B,) embedded into the vector
  image_posenc: str = "rope"       # one of IMAGE_POSENCS
  text_posenc: str = "1d"          # rope: text ids (j,0,0) '1d', 0 'zeros' (FLUX), 'msrope'
  pos_embed_max_size: int = 0      # sincos: centre crop of this grid (SD3: 192); 0: grid itself
  rope_axes_dims: tuple[int, ...] = ()  # (index, row, col) features; () = the default,
                                        # nn.attention.default_rope_axes_dims
  rope_base: float = 10_000.0
  time_scale: float = 1000.0
  attention_backend: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  scan_layers: bool = False        # one compiled block per stack, scanned over its depth
  remat_policy: str = "none"       # one of nn.stack.REMAT_POLICIES

  # --- configuration checks -------------------------------------------------------------
  def check_config(self, height: int | None = None, width: int | None = None):
    check_heads(self.hidden_size, self.num_heads)
    check_options(self, ("text_source", TEXT_SOURCES), ("image_posenc", IMAGE_POSENCS),
                  ("text_posenc", TEXT_POSENCS), ("attention_backend", BACKENDS))
    if self.text_source == "tokens" and self.vocab_size < 4:
      raise InputError(f"vocab_size={self.vocab_size}: text_source='tokens' needs the "
                       "tokenizer's vocabulary size (text.make_tokenizer(name).vocab_size)")
    if self.image_posenc == "rope":
      rope_axes_dims_for(self.hidden_size // self.num_heads, self.rope_axes_dims)
    check_remat_policy(self.remat_policy)
    if height is not None and (height % self.patch_size or width % self.patch_size):
      raise InputError(f"input {height}x{width} is not divisible by patch_size={self.patch_size}:"
                       f" use a multiple of {self.patch_size} or another patch size")

  def stack(self, block_cls, block_kwargs, depth, name, scan=None, start=0):
    """layer_stack with this model's scan_layers and remat_policy."""
    return layer_stack(block_cls, block_kwargs, depth, name=name, start=start,
                       scan=self.scan_layers if scan is None else scan,
                       remat_policy=self.remat_policy)

  # --- the model contract (dit_jax.models.contract.Denoiser) -----------------------------
  time_input = "unit"

  @property
  def condition_spec(self) -> dict:
    S, tokens = self.text_length, self.text_source == "tokens"
    key, shape = ("text_tokens", (S,)) if tokens else ("text", (S, self.context_dim))
    spec = {key: cond_spec(key, shape), "text_mask": cond_spec("text_mask", (S,))}
    if self.pooled_dim and not tokens:
      spec["pooled"] = cond_spec("pooled", (self.pooled_dim,))
    if self.guidance_embed:
      spec["guidance"] = cond_spec("guidance")
    return spec

  def param_counts(self, height: int, width: int, channels: int) -> None:
    return None  # no closed form kept: count with jax.eval_shape

  def attention_shapes(self, height: int, width: int, channels: int):
    """Image tokens attend among themselves (TextDiT); MMDiT widens this to joint attention."""
    tokens = (height // self.patch_size) * (width // self.patch_size)
    return ((self.hidden_size // self.num_heads, tokens * tokens),)

  def null_condition(self, cond: dict) -> dict:
    """The empty caption: BOS + padding for tokens; zero features, no valid token, zero pooled
    vector for embeddings. Other keys (guidance, cond_image) are kept."""
    out = dict(cond)
    if self.text_source == "tokens":
      out["text_tokens"], out["text_mask"] = text_lib.null_tokens(*cond["text_tokens"].shape)
    else:
      out["text"] = jnp.zeros_like(cond["text"])
      out["text_mask"] = jnp.zeros_like(cond["text_mask"], bool)
      if "pooled" in cond:
        out["pooled"] = jnp.zeros_like(cond["pooled"])
    return out

  def default_condition(self, cond: dict | None, batch: int) -> dict:
    """cond None means unconditional: the empty caption (the guidance null condition)."""
    if cond is None:
      return self.null_condition(example_condition(self, batch))
    return dict(cond)

  # --- pieces used by __call__ (called from compact methods) -------------------------------
  def drop_captions(self, cond: dict, train: bool) -> dict:
    if not train or self.text_dropout_prob <= 0:
      return cond
    B = cond["text_mask"].shape[0]
    drop_B = jax.random.bernoulli(self.make_rng("dropout"), self.text_dropout_prob, (B,))
    null = self.null_condition(cond)
    pick = lambda a, b: jnp.where(drop_B.reshape((B,) + (1,) * (a.ndim - 1)), b, a)
    return {k: pick(v, null[k]) if k in TEXT_KEYS else v for k, v in cond.items()}

  def check_cond(self, cond: dict) -> dict:
    missing = [k for k in self.condition_keys if k not in (cond or {})]
    if missing:
      raise InputError(f"cond is missing {missing}: this model (text_source="
                       f"{self.text_source!r}) reads {self.condition_keys}")
    return cond

  def encode_text(self, cond: dict, train: bool):
    """-> text tokens (B, S, D) in model width, mask (B, S), pooled (B, K) or None."""
    cond = self.drop_captions(self.check_cond(cond), train)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    mask_BS = jnp.asarray(cond["text_mask"], bool)
    if self.text_source == "tokens":
      txt_BSK, pooled_BK = self.text_encoder()(cond["text_tokens"], mask_BS,
                                               cond.get("text_ids"))
    else:
      txt_BSK = jnp.asarray(cond["text"]).astype(self.dtype)
      pooled_BK = cond.get("pooled") if self.pooled_dim else None
    txt_BSD = dense(self.hidden_size, (None, axes.EMBED), xavier_uniform(), name="context_embedder",
                    **kw)(txt_BSK)
    return txt_BSD, mask_BS, (pooled_BK if self.use_pooled else None)

  def text_encoder(self) -> text_lib.TextEncoder:
    return text_lib.TextEncoder(
        vocab_size=self.vocab_size, width=self.text_width, depth=self.text_depth,
        num_heads=self.text_heads, mlp_ratio=self.mlp_ratio,
        attention_backend=self.attention_backend, dtype=self.dtype,
        param_dtype=self.param_dtype, name="text_encoder")

  def vector(self, t_B, pooled_BK, cond: dict):
    """The adaLN vector: timestep embedding (+ pooled text) (+ guidance), (B, D)."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    vec = TimestepEmbedder(self.hidden_size, time_scale=self.time_scale, name="t_embedder",
                           **kw)(t_B)
    if pooled_BK is not None:
      vec = vec + MLPEmbedder(self.hidden_size, name="pooled_embedder", **kw)(
          jnp.asarray(pooled_BK).astype(self.dtype))
    if self.guidance_embed:
      g = jnp.broadcast_to(jnp.asarray(cond["guidance"], jnp.float32), t_B.shape)
      vec = vec + TimestepEmbedder(self.hidden_size, time_scale=self.time_scale,
                                   name="guidance_embedder", **kw)(g)
    return vec

  def embed_image(self, x_BHWC, embedder=None):
    """Patch tokens (B, T, D); pass `embedder` to reuse one (Kontext's reference image)."""
    if embedder is None:
      embedder = dense(self.hidden_size, (axes.PATCH, axes.EMBED), xavier_uniform(),
                       name="x_embedder", dtype=self.dtype, param_dtype=self.param_dtype)
    return embedder(patchify(jnp.asarray(x_BHWC).astype(self.dtype), self.patch_size)), embedder

  def image_ids(self, B, h, w, index=0):
    """(B, h*w, 3) RoPE ids of an image grid (centred for MSRoPE)."""
    ids = msrope_ids(h, w, 0)[0] if self.text_posenc == "msrope" else grid_ids(h, w)
    ids[:, 0] = index
    return jnp.broadcast_to(jnp.asarray(ids), (B, h * w, 3))

  def text_ids(self, cond, B, S, h, w):
    if cond.get("text_ids") is not None:
      return jnp.asarray(cond["text_ids"], jnp.float32)
    if self.text_posenc == "zeros":
      return jnp.zeros((B, S, 3))
    if self.text_posenc == "msrope":
      return jnp.broadcast_to(jnp.asarray(msrope_ids(h, w, S)[1]), (B, S, 3))
    return text_lib.text_positions(jnp.ones((B, S), bool))

  def final(self, x_BTD, vec_BD, C, H, W):
    out_BTP = FinalLayer(self.patch_size, self.output_channels(C), name="final_layer",
                         dtype=self.dtype, param_dtype=self.param_dtype)(x_BTD, vec_BD)
    return unpatchify(out_BTP, self.patch_size, H, W).astype(jnp.float32)


class MMDiT(TextConditioned):
  """Joint-attention transformer: depth_double double-stream then depth_single single-stream
  blocks over [text; image] (see the module docstring)."""
  depth_double: int = 4
  depth_single: int = 0
  single_block: str = "parallel"   # FLUX 'parallel' or Z-Image 'sequential'
  qk_norm: bool = True             # per-head RMSNorm of q and k
  reduce_last_text: bool = True    # no single blocks: last text stream is keys/values only
  image_conditioning: bool = False  # cond 'cond_image' tokens appended with index id 1
  cond_image_shape: tuple[int, ...] = ()  # (H', W', C) of cond_image, for condition_spec

  @property
  def condition_spec(self) -> dict:
    spec = super().condition_spec
    if self.image_conditioning:
      if len(self.cond_image_shape) != 3:
        raise InputError(f"cond_image_shape={self.cond_image_shape}: image_conditioning needs "
                         "the (height, width, channels) of the conditioning image")
      spec["cond_image"] = cond_spec("cond_image", self.cond_image_shape)
    return spec

  def forward_flops(self, height: int, width: int, channels: int) -> dict[str, int]:
    return flops.mmdit_flops(self, height, width, channels)

  def attention_shapes(self, height: int, width: int, channels: int):
    """Joint attention over the text, image and conditioning-image tokens in every block."""
    p = self.patch_size
    tokens = (height // p) * (width // p) + self.text_length
    if self.image_conditioning:
      tokens += (self.cond_image_shape[0] // p) * (self.cond_image_shape[1] // p)
    return ((self.hidden_size // self.num_heads, tokens * tokens),)

  def check_config(self, height=None, width=None):
    super().check_config(height, width)
    if self.depth_double < 0 or self.depth_single < 0 or self.depth_double + self.depth_single < 1:
      raise InputError(f"depth_double={self.depth_double}, depth_single={self.depth_single}: "
                       "need non-negative depths with at least one block")
    check_options(self, ("single_block", SINGLE_BLOCKS))

  @nn.compact
  def __call__(self, x_BHWC, t_B, cond: dict | None = None, *, train: bool = False):
    """x (B, H, W, C), t (B,) in [0, 1], cond (module docstring) -> (B, H, W, C or 2C)."""
    B, H, W, C = x_BHWC.shape
    self.check_config(H, W)
    p, cond = self.patch_size, self.default_condition(cond, B)
    h, w = H // p, W // p
    t_B = jnp.broadcast_to(jnp.asarray(t_B, jnp.float32), (B,))
    img_BTD, x_embedder = self.embed_image(x_BHWC)
    T = img_BTD.shape[1]
    txt_BSD, text_mask_BS, pooled = self.encode_text(cond, train)
    S = txt_BSD.shape[1]
    vec_BD = self.vector(t_B, pooled, cond)

    ids_BL3 = None
    if self.image_posenc == "sincos":
      img_BTD = add_sincos_2d(img_BTD, h, w, self.pos_embed_max_size)
    else:
      ids_BL3 = jnp.concatenate([self.text_ids(cond, B, S, h, w), self.image_ids(B, h, w)], 1)
    if self.image_conditioning:  # Kontext: the reference image's tokens join the image stream
      ref = cond["cond_image"]
      ref_BTD, _ = self.embed_image(ref, x_embedder)
      if self.image_posenc == "sincos":
        raise InputError("image_conditioning needs image_posenc='rope' (index id 1 marks the "
                         "conditioning image)")
      hr, wr = ref.shape[1] // p, ref.shape[2] // p
      ids_BL3 = jnp.concatenate([ids_BL3, self.image_ids(B, hr, wr, index=1)], 1)
      img_BTD = jnp.concatenate([img_BTD, ref_BTD], 1)
    mask_BL = jnp.concatenate([text_mask_BS, jnp.ones(img_BTD.shape[:2], bool)], 1)

    blk = dict(num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, qk_norm=self.qk_norm,
               rope_axes_dims=tuple(self.rope_axes_dims), rope_base=self.rope_base,
               attention_backend=self.attention_backend, dtype=self.dtype,
               param_dtype=self.param_dtype)
    args = (vec_BD, ids_BL3, mask_BL)
    img_BTD, txt_BSD = self.double_blocks(blk)((img_BTD, txt_BSD), *args)
    if self.depth_single:
      single = ParallelSingleBlock if self.single_block == "parallel" else SingleStreamBlock
      x_BLD = self.stack(single, blk, self.depth_single, "single")(
          jnp.concatenate([txt_BSD, img_BTD], 1), *args)
      img_BTD = x_BLD[:, S:]
    return self.final(img_BTD[:, :T], vec_BD, C, H, W)

  def double_blocks(self, blk: dict):
    """The double-stream stack; without single blocks and with reduce_last_text, the last
    block (text stream keys/values only: other parameters) runs after the stack."""
    pre_only = self.reduce_last_text and not self.depth_single and self.depth_double > 0
    n = self.depth_double - pre_only
    stack = self.stack(DoubleStreamBlock, blk, n, "double")
    last = self.stack(DoubleStreamBlock, dict(blk, text_pre_only=True), int(pre_only), "double",
                      scan=False, start=n)
    return lambda carry, *args: last(stack(carry, *args), *args)


class TextDiT(TextConditioned):
  """DiT baselines for text: 'pooled_adaln' (pooled text joins the timestep in adaLN-Zero; no
  per-token text anywhere) or 'cross_attn' (adaLN-Zero from t + pooled, and cross-attention
  from image tokens to text tokens in every block). Image tokens use 2D axial RoPE."""
  depth: int = 4
  text_conditioning: str = "pooled_adaln"

  def forward_flops(self, height: int, width: int, channels: int) -> dict[str, int]:
    return flops.text_dit_flops(self, height, width, channels)

  def check_config(self, height=None, width=None):
    super().check_config(height, width)
    check_options(self, ("text_conditioning", TEXT_CONDITIONINGS))
    if self.image_posenc != "rope":
      raise InputError("TextDiT uses image_posenc='rope'")

  @nn.compact
  def __call__(self, x_BHWC, t_B, cond: dict | None = None, *, train: bool = False):
    B, H, W, C = x_BHWC.shape
    self.check_config(H, W)
    cond = self.default_condition(cond, B)
    t_B = jnp.broadcast_to(jnp.asarray(t_B, jnp.float32), (B,))
    x_BTD, _ = self.embed_image(x_BHWC)
    if self.text_conditioning == "pooled_adaln":
      txt_BSD, mask_BS, pooled = None, None, self.pooled_text(cond, train)
    else:
      txt_BSD, mask_BS, pooled = self.encode_text(cond, train)
    vec_BD = self.vector(t_B, pooled, cond)
    ids_BT3 = self.image_ids(B, H // self.patch_size, W // self.patch_size)
    dims = rope_axes_dims_for(self.hidden_size // self.num_heads, self.rope_axes_dims)
    kw = dict(num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, rope_axes_dims=dims,
              rope_base=self.rope_base, attention_backend=self.attention_backend,
              dtype=self.dtype, param_dtype=self.param_dtype)
    if txt_BSD is None:
      run = self.stack(DiTBlock, dict(kw, conditioning="adaln_zero", rope="axial"), self.depth,
                       "blocks")
      x_BTD = run(x_BTD, vec_BD, None, ids_BT3)
    else:
      x_BTD = self.stack(CrossAttnBlock, kw, self.depth, "blocks")(x_BTD, txt_BSD, vec_BD,
                                                                    ids_BT3, mask_BS)
    return self.final(x_BTD, vec_BD, C, H, W)

  def pooled_text(self, cond, train):
    """Only the pooled vector of the text reaches the model."""
    if self.text_source == "tokens":
      cond = self.drop_captions(self.check_cond(cond), train)
      return self.text_encoder()(cond["text_tokens"], cond["text_mask"], cond.get("text_ids"))[1]
    if not self.pooled_dim:
      raise InputError("text_conditioning='pooled_adaln' with text_source='embeddings' needs "
                       "pooled_dim > 0 (the pooled vector is its only text input)")
    return self.drop_captions(cond, train)["pooled"]


# Published shapes (no weights needed: check with jax.eval_shape). Sources: the FLUX.1 reference
# code's flux-dev/schnell params (hidden 3072, 24 heads, depth 19 + 38, axes_dim (16, 56, 56),
# context 4096 T5-XXL, vec 768 CLIP-L, in 64 = 2x2-packed 16-channel latents; 11.9B
# parameters), SD3 paper / SD3-medium MMDiT (depth 24, hidden 64 * depth, patch 2, 16 latent
# channels, context 4096, pooled 2048 = CLIP-L + CLIP-G, pos_embed_max_size 192 fixed sin-cos,
# ~2.03B parameters), Qwen-Image report (60 MMDiT blocks, hidden 3072, 24 heads, Qwen2.5-VL-7B
# features 3584, MSRoPE, ~20B), Z-Image report (single stream, hidden 3840, 30 heads, 30
# layers, Qwen3-4B features 2560; see PUBLISHED_PARAMS for what is not modelled).
_FLUX = dict(patch_size=2, hidden_size=3072, num_heads=24, depth_double=19, depth_single=38,
             single_block="parallel", qk_norm=True, text_source="embeddings", context_dim=4096,
             pooled_dim=768, text_posenc="zeros", rope_axes_dims=(16, 56, 56), text_length=512)
PRESETS = {
    "FLUX.1-dev": dict(_FLUX, guidance_embed=True),
    "FLUX.1-schnell": dict(_FLUX, text_length=256),
    "FLUX.1-Kontext-dev": dict(_FLUX, guidance_embed=True, image_conditioning=True,
                               cond_image_shape=(128, 128, 16)),
    "SD3-medium": dict(patch_size=2, hidden_size=1536, num_heads=24, depth_double=24,
                       qk_norm=False, text_source="embeddings", context_dim=4096, pooled_dim=2048,
                       image_posenc="sincos", pos_embed_max_size=192, text_length=333),
    "Qwen-Image": dict(patch_size=2, hidden_size=3072, num_heads=24, depth_double=60,
                       qk_norm=True, text_source="embeddings", context_dim=3584, pooled_dim=0,
                       use_pooled=False, text_posenc="msrope", rope_axes_dims=(16, 56, 56),
                       reduce_last_text=False, text_length=512),
    "Z-Image": dict(patch_size=2, hidden_size=3840, num_heads=30, depth_double=0,
                    depth_single=30, single_block="sequential", qk_norm=True,
                    text_source="embeddings", context_dim=2560, pooled_dim=0, use_pooled=False,
                    rope_axes_dims=(32, 48, 48), text_length=512),
}
# Published parameter totals of the transformers alone, with the relative tolerance the tests
# allow: FLUX.1-dev's 11,901,408,320 and SD3-medium's 2,028,328,000 (the released checkpoints'
# counts) are met exactly; Qwen-Image is published as "20B" (this layout gives 20.43B).
# Z-Image is not checked: its SwiGLU FFN, low-rank adaLN and refiner layers are not modelled,
# so the preset has Z-Image's layout and widths (8.0B here) but not its 6B parameters.
PUBLISHED_PARAMS = {"FLUX.1-dev": (11_901_408_320, 0.0), "SD3-medium": (2_028_328_000, 0.0),
                    "Qwen-Image": (20e9, 0.03)}
# Latent input (H, W, C) at which the presets are usually run: 1024 px through an 8x VAE.
PRESET_INPUT = {"FLUX.1-dev": (128, 128, 16), "FLUX.1-schnell": (128, 128, 16),
                "FLUX.1-Kontext-dev": (128, 128, 16), "SD3-medium": (128, 128, 16),
                "Qwen-Image": (128, 128, 16), "Z-Image": (128, 128, 16)}
NAMES = ("MMDiT", "TextDiT", *PRESETS)


def mmdit(name: str, **overrides) -> TextConditioned:
  """A text-conditioned model by name: a preset ('FLUX.1-dev', 'SD3-medium', ...) with fields
  overridden, or 'MMDiT' / 'TextDiT' built from the fields alone."""
  if name == "TextDiT":
    return TextDiT(**overrides)
  if name == "MMDiT":
    return MMDiT(**overrides)
  if name not in PRESETS:
    raise InputError(f"unknown MM-DiT model name {name!r}: use one of {NAMES}")
  return MMDiT(**{**PRESETS[name], **overrides})
