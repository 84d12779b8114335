"""U-Net: the convolutional denoiser (Ronneberger et al.; ADM, LDM/Stable Diffusion variants).

Convolutions give vision's inductive bias (locality, translation equivariance); the encoder
halves the resolution level by level (local -> global features), the decoder doubles it back,
and skip connections hand each decoder level the encoder's features of the same size, so the
output has the input's shape.

    model = unet("UNet-small", conditioning="scale_shift")
    params = model.init(rng, x_BHWC, t_B, {"label": y_B})
    out_BHWC = model.apply(params, x_BHWC, t_B, {"label": y_B})

Layout (ADM's): conv_in 3x3; per level `num_res_blocks` residual blocks (GroupNorm, SiLU,
conv 3x3, twice) at `base_channels * channel_mult[level]` channels, each followed by
attention at `attention_levels`, then a 2x downsampling (max / average pooling or a strided
conv); a middle block (res, attention, res); per level on the way up `num_res_blocks + 1`
residual blocks, each reading one saved encoder feature concatenated on the channels (the
"copy" of copy-and-crop; "same" padding keeps sizes equal, so nothing is cropped), then a 2x
upsampling (transposed conv or nearest resize + conv); GroupNorm, SiLU and a final 1x1 conv.

`conditioning` picks how the time + class embedding e = t_emb + y_emb enters the res blocks:
  add          h <- h + Linear(SiLU(e)) after the first conv (DDPM, Ho et al.)
  scale_shift  h <- GroupNorm(h) (1 + scale) + shift, (scale, shift) = Linear(SiLU(e)) (ADM)
  cross_attn   the res blocks see nothing; attention blocks are spatial transformers whose
               pixels cross-attend to the condition tokens [t_emb, y_emb] (LDM/SD-style)
With `text_dim > 0` the model also reads cond["text"] (B, S, text_dim), precomputed features
of a frozen text encoder (CLIP for SD), projects them to condition tokens and cross-attends
to them (time and class still enter by `conditioning`):
the Stable Diffusion arrangement is conditioning="add" with text cross-attention.

Shapes: B batch, H/W image, C channels, E embedding width, S condition tokens, T = h*w pixels
of a feature map seen as tokens.
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dit_jax.errors import InputError
from dit_jax.models import flops
from dit_jax.models.contract import DerivedContract, check_options, cond_spec
from dit_jax.nn import axes
from dit_jax.nn.adaln import affine_layer_norm
from dit_jax.nn.attention import BACKENDS, Attention
from dit_jax.nn.conv import conv, group_norm
from dit_jax.nn.embed import LabelEmbedder, TimestepEmbedder, dense
from dit_jax.nn.mlp import Mlp

Dtype = Any

CONDITIONINGS = ("add", "scale_shift", "cross_attn")
DOWNSAMPLES = ("conv", "max", "avg")
UPSAMPLES = ("transpose", "resize")
GN_EPS = 1e-5  # GroupNorm epsilon (flax / PyTorch default)

PRESETS = {
    # The bundled 8x8 digits (1 channel): two levels, 8x8 and 4x4 (see configs/unet.py).
    "UNet-small": dict(base_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                       attention_levels=(1,), num_heads=4, num_groups=8, num_classes=10,
                       learn_sigma=False),
    # ADM (Dhariwal & Nichol 2021) class-conditional 256x256 pixels: attention at 32, 16, 8.
    "UNet-ADM-256": dict(base_channels=256, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
                         attention_levels=(3, 4, 5), head_channels=64, num_groups=32,
                         conditioning="scale_shift", upsample="resize", num_classes=1000,
                         learn_sigma=True),
    # Stable Diffusion 1.x-style latent U-Net (64x64x4 latents of 512x512 images): time added,
    # text (768-wide tokens) by cross-attention in spatial transformers at 64, 32, 16.
    "UNet-SD-latent": dict(base_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=2,
                           attention_levels=(0, 1, 2), num_heads=8, num_groups=32,
                           conditioning="add", upsample="resize", num_classes=0, text_dim=768,
                           learn_sigma=False),
}
# The (H, W, C) input each preset is built for.
PRESET_INPUTS = {"UNet-small": (8, 8, 1), "UNet-ADM-256": (256, 256, 3),
                 "UNet-SD-latent": (64, 64, 4)}


def unet(name: str, **overrides) -> "UNet":
  """A U-Net by preset name ('UNet-small', 'UNet-ADM-256', 'UNet-SD-latent'), fields overridden."""
  if name not in PRESETS:
    raise InputError(f"unknown U-Net preset {name!r}: expected one of {tuple(PRESETS)}, or "
                     "name='UNet' with explicit fields")
  return UNet(**{**PRESETS[name], **overrides})


@dataclasses.dataclass(frozen=True)
class Step:
  """One stage of the U-Net after conv_in: op in ('res', 'attn', 'down', 'up') at a level,
  channels in -> out. Decoder res blocks first concatenate `skip` channels popped from the
  encoder's stack; encoder stages with `push` put their output on it."""
  name: str
  op: str
  level: int
  in_channels: int
  out_channels: int
  skip: int = 0
  push: bool = False


def layout(model: "UNet") -> list[Step]:
  """The U-Net as a list of steps after conv_in; the module, the FLOP count and the receptive
  field tool all walk this list. The encoder pushes conv_in's output, the output of every
  res (+ attention) block and every downsampled map; each decoder res block pops one."""
  channels = [model.base_channels * m for m in model.channel_mult]
  last = len(channels) - 1
  ch = channels[0]
  stack, steps = [ch], []
  for level, out in enumerate(channels):
    for i in range(model.num_res_blocks):
      attn = level in model.attention_levels
      steps.append(Step(f"enc{level}_res{i}", "res", level, ch, out, push=not attn))
      ch = out
      if attn:
        steps.append(Step(f"enc{level}_attn{i}", "attn", level, ch, ch, push=True))
      stack.append(ch)
    if level != last:
      steps.append(Step(f"down{level}", "down", level, ch, ch, push=True))
      stack.append(ch)
  steps.append(Step("mid_res0", "res", last, ch, ch))
  if model.attention_levels:
    steps.append(Step("mid_attn", "attn", last, ch, ch))
  steps.append(Step("mid_res1", "res", last, ch, ch))
  for level in reversed(range(len(channels))):
    for i in range(model.num_res_blocks + 1):
      skip = stack.pop()
      steps.append(Step(f"dec{level}_res{i}", "res", level, ch + skip, channels[level], skip))
      ch = channels[level]
      if level in model.attention_levels:
        steps.append(Step(f"dec{level}_attn{i}", "attn", level, ch, ch))
    if level:
      steps.append(Step(f"up{level}", "up", level, ch, ch))
  return steps


WIDE = (None, None, axes.EMBED, axes.MLP)  # conv kernels between wide feature maps
LECUN = nn.initializers.lecun_normal()


class ResBlock(nn.Module):
  """x + conv(SiLU(norm(conv(SiLU(GroupNorm(x)))))) with the embedding injected per
  `conditioning`; the second conv starts at zero (the block is the identity, ADM's choice).
  A 1x1 conv matches the channels of the residual path when they change."""
  out_channels: int
  num_groups: int = 32
  conditioning: str = "add"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC, emb_BE):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    C = self.out_channels
    norm = lambda name, y: group_norm(self.num_groups, GN_EPS, name, self.param_dtype)(y)
    h = nn.silu(norm("norm1", x_BHWC)).astype(self.dtype)
    h = conv(C, 3, WIDE, name="conv1", **kw)(h)
    e_BE = None if emb_BE is None else nn.silu(emb_BE)  # None: cross_attn conditioning
    if self.conditioning == "add":
      h = h + dense(C, (axes.EMBED, axes.MLP), LECUN, name="emb", **kw)(e_BE)[:, None, None, :]
    h = norm("norm2", h)
    if self.conditioning == "scale_shift":
      ss = dense((2, C), (axes.EMBED, axes.MODULATION, axes.MLP), LECUN, name="emb",
                 **kw)(e_BE).astype(jnp.float32)
      h = h * (1.0 + ss[:, None, None, 0]) + ss[:, None, None, 1]
    h = conv(C, 3, WIDE, name="conv2", kernel_init=nn.initializers.zeros,
             **kw)(nn.silu(h).astype(self.dtype))
    if x_BHWC.shape[-1] != C:
      x_BHWC = conv(C, 1, WIDE, name="skip", **kw)(x_BHWC)
    return x_BHWC + h


class AttentionBlock(nn.Module):
  """Self-attention over the pixels of a feature map, residual (ADM). With condition tokens,
  a spatial transformer (LDM/SD): 1x1 in, [self-attn, cross-attn to the tokens, MLP] each
  pre-LayerNorm and residual, then a zero-initialised 1x1 out."""
  num_heads: int
  num_groups: int = 32
  attention_backend: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC, tokens_BSE=None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    B, H, W, C = x_BHWC.shape
    h_BTC = group_norm(self.num_groups, GN_EPS, "norm", self.param_dtype)(x_BHWC)
    h_BTC = h_BTC.astype(self.dtype).reshape(B, H * W, C)
    attn = lambda name: Attention(self.num_heads, self.attention_backend, name=name, **kw)
    if tokens_BSE is None:
      return x_BHWC + attn("attn")(h_BTC).reshape(B, H, W, C)
    norm = lambda name, y: affine_layer_norm(name, self.param_dtype)(y).astype(self.dtype)
    h_BTC = dense(C, (axes.EMBED, axes.MLP), LECUN, name="proj_in", **kw)(h_BTC)
    h_BTC = h_BTC + attn("attn")(norm("norm1", h_BTC))
    h_BTC = h_BTC + attn("cross_attn")(norm("norm2", h_BTC), tokens_BSE)
    h_BTC = h_BTC + Mlp(name="mlp", **kw)(norm("norm3", h_BTC))
    h_BTC = dense(C, (axes.MLP, axes.EMBED), nn.initializers.zeros, name="proj_out", **kw)(h_BTC)
    return x_BHWC + h_BTC.reshape(B, H, W, C)


class UNet(DerivedContract, nn.Module):
  """U-Net denoiser on NHWC images or latents; see the module docstring."""
  base_channels: int = 64
  channel_mult: tuple[int, ...] = (1, 2, 2)   # channels per level, x base_channels
  num_res_blocks: int = 2                     # per encoder level (decoder: one more)
  attention_levels: tuple[int, ...] = ()      # levels (0 = full size) with attention; any
                                              # level also puts attention in the middle block
  num_heads: int = 4
  head_channels: int = 0                      # > 0: heads = channels // head_channels (ADM)
  num_groups: int = 32                        # GroupNorm groups; must divide every width
  conditioning: str = "add"                   # one of CONDITIONINGS
  downsample: str = "conv"                    # one of DOWNSAMPLES
  upsample: str = "transpose"                 # one of UPSAMPLES
  embed_dim: int = 0                          # time/class embedding width; 0: 4 * base
  num_classes: int = 10                       # 0: unconditional
  class_dropout_prob: float = 0.1             # label -> null class in training (guidance)
  text_dim: int = 0                           # > 0: cross-attend to cond["text"]
  text_length: int = 77                       # text tokens of example inputs and flop counts
                                              # (CLIP's 77); any length runs
  learn_sigma: bool = False                   # output 2C channels
  time_scale: float = 1000.0                  # t in [0, 1] is embedded as t * time_scale
  attention_backend: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def num_levels(self) -> int:
    return len(self.channel_mult)

  @property
  def emb_dim(self) -> int:
    return self.embed_dim or 4 * self.base_channels

  @property
  def uses_tokens(self) -> bool:
    """Whether attention blocks cross-attend to condition tokens (spatial transformers)."""
    return self.conditioning == "cross_attn" or self.text_dim > 0

  def heads(self, channels: int) -> int:
    return channels // self.head_channels if self.head_channels else self.num_heads

  def check_config(self, height: int | None = None, width: int | None = None):
    """Raises ValueError naming the field and the fix for an inconsistent configuration."""
    check_options(self, ("conditioning", CONDITIONINGS), ("downsample", DOWNSAMPLES),
                  ("upsample", UPSAMPLES), ("attention_backend", BACKENDS))
    if not self.channel_mult or self.num_res_blocks < 1 or self.base_channels < 1:
      raise InputError(f"channel_mult={self.channel_mult} must be non-empty, num_res_blocks="
                       f"{self.num_res_blocks} and base_channels={self.base_channels} >= 1")
    bad = [lv for lv in self.attention_levels if not 0 <= lv < self.num_levels]
    if bad:
      raise InputError(f"attention_levels={self.attention_levels} has levels {bad} outside "
                       f"0..{self.num_levels - 1} (one per entry of channel_mult)")
    if self.conditioning == "cross_attn" and not self.attention_levels:
      raise InputError("conditioning='cross_attn' injects time and class only in attention "
                       "blocks: set attention_levels (e.g. (1,)) or use 'add' / 'scale_shift'")
    for m in self.channel_mult:
      ch = self.base_channels * m
      if ch % self.num_groups:
        raise InputError(f"num_groups={self.num_groups} does not divide the width {ch} "
                         f"(base_channels * channel_mult): pick num_groups dividing every width")
      if self.attention_levels and ch % self.heads(ch):
        raise InputError(f"width {ch} is not divisible into {self.heads(ch)} heads: change "
                         "num_heads / head_channels")
      if self.head_channels and ch % self.head_channels:
        raise InputError(f"head_channels={self.head_channels} does not divide the width {ch}")
    factor = 2 ** (self.num_levels - 1)
    if height is not None and (height % factor or width % factor):
      raise InputError(f"input {height}x{width} cannot be halved {self.num_levels - 1} times "
                       f"(len(channel_mult)={self.num_levels} levels): use an image size that "
                       f"is a multiple of {factor}, or fewer levels in channel_mult")

  # The model contract (dit_jax.models.contract.Denoiser).
  time_input = "unit"

  @property
  def condition_spec(self) -> dict:
    spec = {"label": cond_spec("label")} if self.num_classes else {}
    if self.text_dim:
      spec["text"] = cond_spec("text", (self.text_length, self.text_dim))
    return spec

  def null_condition(self, cond: dict | None) -> dict | None:
    """The unconditional `cond` for guidance: null class, and all-zero text features."""
    if cond is None:
      return None
    out = dict(cond)
    if self.num_classes:
      out["label"] = jnp.full_like(cond["label"], self.num_classes)
    if self.text_dim:
      out["text"] = jnp.zeros_like(cond["text"])
    return out

  def forward_flops(self, height: int, width: int, channels: int) -> dict[str, int]:
    return self.counts(height, width, channels)[0]

  def param_counts(self, height: int, width: int, channels: int) -> dict[str, int]:
    return self.counts(height, width, channels)[1]

  def attention_shapes(self, height: int, width: int, channels: int):
    """One per attention level (and the middle block's, at the last level): width
    base_channels * channel_mult[level] in heads, on the feature map of that level."""
    levels = set(self.attention_levels) | ({self.num_levels - 1} if self.attention_levels
                                           else set())
    shapes = set()
    for level in levels:
      ch = self.base_channels * self.channel_mult[level]
      tokens = (height >> level) * (width >> level)
      shapes.add((ch // self.heads(ch), tokens * tokens))
    return tuple(sorted(shapes, key=lambda s: -s[1]))

  def counts(self, height: int, width: int, channels: int) -> tuple[dict, dict]:
    """(forward multiply-adds, parameters) per component (dit_jax.models.flops)."""
    return flops.unet_counts(self, layout(self), height, width, channels, self.text_length)

  def condition(self, t_B, cond, train):
    """The embedding e (B, E) for the res blocks (None with cross_attn) and the condition
    tokens (B, S, E) for attention blocks (None without cross-attention)."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    E = self.emb_dim
    t_BE = TimestepEmbedder(E, time_scale=self.time_scale, name="t_embedder", **kw)(t_B)
    embs = [t_BE]
    if self.num_classes:
      if cond is None or "label" not in cond:
        raise InputError(f"this U-Net is class-conditional (num_classes={self.num_classes}): "
                         "pass cond={'label': labels} (num_classes is the null class), or set "
                         "num_classes=0")
      embs.append(LabelEmbedder(self.num_classes, E, self.class_dropout_prob, name="y_embedder",
                                **kw)(cond["label"], train=train))
    tokens = [jnp.stack(embs, axis=1)] if self.conditioning == "cross_attn" else []
    if self.text_dim:
      if cond is None or "text" not in cond:
        raise InputError(f"text_dim={self.text_dim}: pass cond['text'] (precomputed text "
                         f"embeddings) of shape (B, S, {self.text_dim}), or set text_dim=0")
      tokens.append(dense(E, (axes.EMBED, axes.MLP), LECUN, name="text_proj",
                          **kw)(cond["text"].astype(self.dtype)))
    emb_BE = None if self.conditioning == "cross_attn" else sum(embs)
    return emb_BE, (jnp.concatenate(tokens, axis=1) if tokens else None)

  def resample(self, step: Step, h):
    kw = dict(name=step.name, dtype=self.dtype, param_dtype=self.param_dtype)
    C = step.out_channels
    if step.op == "down":
      if self.downsample == "conv":
        return conv(C, 3, WIDE, stride=2, **kw)(h)
      pool = nn.max_pool if self.downsample == "max" else nn.avg_pool
      return pool(h, (2, 2), strides=(2, 2))
    if self.upsample == "transpose":
      return conv(C, 2, WIDE, stride=2, padding="VALID", transpose=True, **kw)(h)
    B, H, W, _ = h.shape
    return conv(C, 3, WIDE, **kw)(jax.image.resize(h, (B, 2 * H, 2 * W, h.shape[-1]), "nearest"))

  @nn.compact
  def __call__(self, x_BHWC, t_B, cond: dict | None = None, *, train: bool = False,
               zero_skips: bool = False):
    """x (B, H, W, C), t (B,) or scalar in [0, 1], cond {'label': (B,) int, 'text':
    (B, S, text_dim) when text_dim > 0} -> (B, H, W, C'), C' = 2C with learn_sigma.
    `zero_skips` replaces every skip feature by zeros (to show what they carry)."""
    B, H, W, C = x_BHWC.shape
    self.check_config(H, W)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    t_B = jnp.broadcast_to(jnp.asarray(t_B, jnp.float32), (B,))
    emb_BE, tokens_BSE = self.condition(t_B, cond, train)

    h = conv(self.base_channels * self.channel_mult[0], 3, (None, None, axes.PATCH, axes.MLP),
             name="conv_in", **kw)(x_BHWC.astype(self.dtype))
    stack = [h]
    for step in layout(self):
      if step.op in ("down", "up"):
        h = self.resample(step, h)
      elif step.op == "res":
        if step.skip:
          skip = stack.pop()
          h = jnp.concatenate([h, jnp.zeros_like(skip) if zero_skips else skip], axis=-1)
        h = ResBlock(step.out_channels, self.num_groups, self.conditioning, name=step.name,
                     **kw)(h, emb_BE)
      else:
        h = AttentionBlock(self.heads(step.out_channels), self.num_groups,
                           self.attention_backend, name=step.name, **kw)(h, tokens_BSE)
      if step.push:
        stack.append(h)
    h = nn.silu(group_norm(self.num_groups, GN_EPS, "norm_out", self.param_dtype)(h))
    h = h.astype(self.dtype)
    out = conv(self.output_channels(C), 1, (None, None, axes.EMBED, axes.PATCH), name="conv_out",
               kernel_init=nn.initializers.zeros, **kw)(h)
    return out.astype(jnp.float32)
