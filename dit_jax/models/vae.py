"""The KL autoencoder of latent diffusion (LDM, Rombach et al. 2022): images <-> latents.

    vae = vae_preset("SD")                        # 8x down, 4 latent channels, scale 0.18215
    dist = vae.apply(v, x_BHWC, method=vae.encode)    # LatentDist: mean, logvar, sample(rng)
    x_BHWC = vae.apply(v, z_BhwC, method=vae.decode)  # images in about [-1, 1]
    z_scaled = vae.scale_latents(dist.sample(rng))     # what a DiT trains on

Submodule names follow the diffusers `AutoencoderKL` state dict, with `foo_N` where diffusers
writes `foo.N`, so `dit_jax.convert.vae` maps weights by renaming only:

    encoder.conv_in                         3x3, in_channels -> block_out_channels[0]
    encoder.down_blocks.{i}.resnets.{j}     ResnetBlock: norm1, conv1, norm2, conv2,
                                            conv_shortcut (1x1, only when channels change)
    encoder.down_blocks.{i}.downsamplers.0.conv   3x3 stride 2 after padding (0, 1, 0, 1);
                                            every block but the last
    encoder.mid_block.resnets.{0,1}, encoder.mid_block.attentions.0.{group_norm, to_q, to_k,
                                            to_v, to_out.0}   (one head of full width)
    encoder.conv_norm_out, encoder.conv_out 3x3 -> 2 * latent_channels (mean | logvar)
    quant_conv, post_quant_conv             1x1 (absent in SD3/FLUX VAEs)
    decoder.conv_in                         3x3, latent_channels -> block_out_channels[-1]
    decoder.mid_block                       as in the encoder
    decoder.up_blocks.{i}.resnets.{j}       block_out_channels reversed, layers_per_block + 1
                                            resnets each
    decoder.up_blocks.{i}.upsamplers.0.conv nearest 2x then 3x3; every block but the last
    decoder.conv_norm_out, decoder.conv_out 3x3 -> out_channels

GroupNorm everywhere has `norm_num_groups` groups and eps 1e-6, computed in float32; SiLU is
the activation. The latent scaling: a diffusion model sees (z - shift_factor) * scaling_factor
and its samples are decoded with decode(z / scaling_factor + shift_factor).
"""
import dataclasses
import warnings

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from dit_jax.errors import InputError
from dit_jax.nn import axes, conv as conv_lib
from dit_jax.nn.attention import BACKENDS, attention

Dtype = jnp.dtype
NORM_EPS = 1e-6  # diffusers' GroupNorm epsilon
TORCH_CONV_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")  # PyTorch's
LOGVAR_RANGE = (-30.0, 20.0)  # clipped as in LDM, so exp(logvar) never overflows

# Published architectures (numbers from the diffusers configs of each release).
PRESETS = {
    # Stable Diffusion 1.x/2.x (and sd-vae-ft-mse): 83,653,863 parameters.
    "SD": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
               scaling_factor=0.18215),
    # SDXL: same architecture, retrained, its own scale.
    "SDXL": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                 scaling_factor=0.13025),
    # SD3 and FLUX.1: 16 latent channels, no quant convs, a shift.
    "SD3": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16,
                scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
                use_post_quant_conv=False),
    "FLUX": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                 latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159,
                 use_quant_conv=False, use_post_quant_conv=False),
    # For the bundled 32x32 data: 4x down, trains on CPU in minutes.
    "tiny": dict(block_out_channels=(16, 32, 64), layers_per_block=1, latent_channels=4,
                 norm_num_groups=8, scaling_factor=1.0),
}


@flax.struct.dataclass
class LatentDist:
  """A diagonal Gaussian posterior q(z | x): mean and log-variance, (B, h, w, c) each."""
  mean: jax.Array
  logvar: jax.Array

  @property
  def std(self) -> jax.Array:
    return jnp.exp(0.5 * self.logvar)

  def sample(self, rng: jax.Array) -> jax.Array:
    return self.mean + self.std * jax.random.normal(rng, self.mean.shape, self.mean.dtype)

  def mode(self) -> jax.Array:
    return self.mean

  def kl(self) -> jax.Array:
    """KL(q || N(0, I)) summed over latent elements: (B,)."""
    return kl_to_standard_normal(self.mean, self.logvar)


def kl_to_standard_normal(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """0.5 * sum(mean^2 + var - 1 - logvar) over all but the batch axis."""
  terms = jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar
  return 0.5 * jnp.sum(terms.astype(jnp.float32), axis=tuple(range(1, mean.ndim)))


def conv(features: int, kernel: int, name: str, *, dtype, param_dtype, stride: int = 1,
         padding="SAME", in_axis: str = axes.EMBED, out_axis: str = axes.MLP) -> nn.Conv:
  """A conv with PyTorch's default init whose HWIO kernel carries logical names: feature
  widths EMBED in, MLP out; the convs touching image or latent channels name that side PATCH
  (never sharded)."""
  return conv_lib.conv(features, kernel, (None, None, in_axis, out_axis), name=name,
                       dtype=dtype, param_dtype=param_dtype, stride=stride, padding=padding,
                       kernel_init=TORCH_CONV_INIT)


def group_norm(groups: int, name: str, param_dtype) -> nn.GroupNorm:
  """diffusers' GroupNorm: epsilon 1e-6, scale and bias named MLP."""
  return conv_lib.group_norm(groups, NORM_EPS, name, param_dtype, axis_name=axes.MLP)


class ResnetBlock(nn.Module):
  """GN -> SiLU -> conv3x3 -> GN -> SiLU -> conv3x3, plus a (1x1-projected) shortcut."""
  out_channels: int
  groups: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC):
    c_in = x_BHWC.shape[-1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = nn.silu(group_norm(self.groups, "norm1", self.param_dtype)(x_BHWC))
    h = conv(self.out_channels, 3, "conv1", **kw)(h.astype(self.dtype))
    h = nn.silu(group_norm(self.groups, "norm2", self.param_dtype)(h))
    h = conv(self.out_channels, 3, "conv2", **kw)(h.astype(self.dtype))
    if c_in != self.out_channels:
      x_BHWC = conv(self.out_channels, 1, "conv_shortcut", **kw)(x_BHWC)
    return x_BHWC + h


class AttentionBlock(nn.Module):
  """Single-head self-attention over all h*w positions, with a residual (mid block only).
  Goes through the attention backend switch: "auto" picks the chunked backend for large grids
  on CPU (a 128x128 latent has 16384 tokens: a 1 GiB float32 score matrix otherwise)."""
  groups: int = 32
  attention_backend: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC):
    B, H, W, C = x_BHWC.shape
    h = group_norm(self.groups, "group_norm", self.param_dtype)(x_BHWC)
    h_BTC = h.reshape(B, H * W, C).astype(self.dtype)
    init = nn.initializers.lecun_normal()
    proj = lambda name, names: nn.Dense(
        C, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
        kernel_init=nn.with_logical_partitioning(init, names),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[-1:]))
    q_BT1C, k_BS1C, v_BS1C = (proj(f"to_{n}", (axes.EMBED, axes.MLP))(h_BTC)[:, :, None]
                              for n in "qkv")  # one head of width C
    out_BTC = attention(q_BT1C, k_BS1C, v_BS1C, backend=self.attention_backend)[:, :, 0]
    out_BTC = proj("to_out_0", (axes.MLP, axes.EMBED))(out_BTC)
    return x_BHWC + out_BTC.reshape(B, H, W, C).astype(x_BHWC.dtype)


class MidBlock(nn.Module):
  """resnet -> attention -> resnet at the lowest resolution."""
  groups: int = 32
  attention: bool = True
  attention_backend: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC):
    C = x_BHWC.shape[-1]
    kw = dict(groups=self.groups, dtype=self.dtype, param_dtype=self.param_dtype)
    x_BHWC = ResnetBlock(C, name="resnets_0", **kw)(x_BHWC)
    if self.attention:
      x_BHWC = AttentionBlock(attention_backend=self.attention_backend, name="attentions_0",
                              **kw)(x_BHWC)
    return ResnetBlock(C, name="resnets_1", **kw)(x_BHWC)


class Resample(nn.Module):
  """2x resampling. `direction` "down": a stride-2 3x3 conv after padding one row/column at
  the bottom/right only; "up": nearest-neighbour 2x, then a 3x3 conv."""
  direction: str
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if self.direction == "up":
      x_BHWC = x_BHWC.repeat(2, axis=1).repeat(2, axis=2)
      return conv(x_BHWC.shape[-1], 3, "conv", **kw)(x_BHWC)
    x_BHWC = jnp.pad(x_BHWC, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return conv(x_BHWC.shape[-1], 3, "conv", stride=2, padding="VALID", **kw)(x_BHWC)


class _Stage(nn.Module):
  """A down/up block: `resnets_j` then optionally `downsamplers_0` / `upsamplers_0`."""
  out_channels: int
  num_resnets: int
  resample: str | None  # "down", "up" or None
  groups: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for j in range(self.num_resnets):
      x_BHWC = ResnetBlock(self.out_channels, self.groups, name=f"resnets_{j}", **kw)(x_BHWC)
    if self.resample:
      x_BHWC = Resample(self.resample, name=f"{self.resample}samplers_0", **kw)(x_BHWC)
    return x_BHWC


class Coder(nn.Module):
  """The encoder (`resample="down"`: (B, H, W, in) -> (B, H/f, W/f, out_channels), the
  moments) or the decoder ("up": (B, h, w, latent) -> (B, h*f, w*f, out_channels)),
  f = 2^(len(block_out_channels) - 1). The two mirror each other: conv_in, then the down
  stages and the mid block, or the mid block and the up stages (block_out_channels reversed,
  one more resnet each), then GN -> SiLU -> conv_out."""
  resample: str  # "down" (encoder) or "up" (decoder)
  block_out_channels: tuple[int, ...]
  layers_per_block: int
  out_channels: int
  groups: int = 32
  mid_block_attention: bool = True
  attention_backend: str = "auto"  # of the mid-block attention; one of attention.BACKENDS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    up = self.resample == "up"
    blocks = tuple(reversed(self.block_out_channels)) if up else tuple(self.block_out_channels)
    h = conv(blocks[0], 3, "conv_in", in_axis=axes.PATCH, **kw)(x_BHWC.astype(self.dtype))
    mid_block = MidBlock(self.groups, self.mid_block_attention, self.attention_backend,
                         name="mid_block", **kw)
    if up:
      h = mid_block(h)
    for i, channels in enumerate(blocks):
      last = i == len(blocks) - 1
      h = _Stage(channels, self.layers_per_block + int(up), None if last else self.resample,
                 self.groups, name=f"{self.resample}_blocks_{i}", **kw)(h)
    if not up:
      h = mid_block(h)
    h = nn.silu(group_norm(self.groups, "conv_norm_out", self.param_dtype)(h))
    return conv(self.out_channels, 3, "conv_out", out_axis=axes.PATCH,
                **kw)(h.astype(self.dtype))


class AutoencoderKL(nn.Module):
  """The LDM KL autoencoder. `encode`/`decode` are the methods samplers and latent extraction
  call; `__call__(x, rng)` is the training forward: (reconstruction, posterior)."""
  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  latent_channels: int = 4
  norm_num_groups: int = 32
  scaling_factor: float = 0.18215  # latents are multiplied by this for the diffusion model
  shift_factor: float = 0.0        # ... after subtracting this
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_attention: bool = True
  attention_backend: str = "auto"  # of the mid-block attention; one of attention.BACKENDS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def downsample(self) -> int:
    return 2 ** (len(self.block_out_channels) - 1)

  def check_config(self, height: int | None = None, width: int | None = None):
    """Raises ValueError naming the field when the VAE cannot be built or run on HxW."""
    for c in self.block_out_channels:
      if c % self.norm_num_groups:
        raise InputError(f"vae.block_out_channels={tuple(self.block_out_channels)}: every "
                         f"width must be divisible by vae.norm_num_groups={self.norm_num_groups}")
    if self.attention_backend not in BACKENDS:
      raise InputError(f"vae.attention_backend={self.attention_backend!r} is not one of "
                       f"{BACKENDS}")
    for side in (height, width):
      if side is not None and side % self.downsample:
        raise InputError(f"image side {side} is not divisible by the VAE downsampling factor "
                         f"{self.downsample} (2^(len(block_out_channels) - 1)): resize the "
                         "images (data.image_size) or use fewer blocks")

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    arch = dict(block_out_channels=tuple(self.block_out_channels),
                layers_per_block=self.layers_per_block, groups=self.norm_num_groups,
                mid_block_attention=self.mid_block_attention,
                attention_backend=self.attention_backend, **kw)
    self.encoder = Coder("down", out_channels=2 * self.latent_channels, **arch)
    self.decoder = Coder("up", out_channels=self.out_channels, **arch)
    latent = dict(in_axis=axes.PATCH, out_axis=None, **kw)  # one name may not repeat
    if self.use_quant_conv:
      self.quant_conv = conv(2 * self.latent_channels, 1, "quant_conv", **latent)
    if self.use_post_quant_conv:
      self.post_quant_conv = conv(self.latent_channels, 1, "post_quant_conv", **latent)

  def encode(self, x_BHWC) -> LatentDist:
    """Images in [-1, 1] -> the posterior over unscaled latents (B, H/f, W/f, latent)."""
    moments = self.encoder(x_BHWC)
    if self.use_quant_conv:
      moments = self.quant_conv(moments)
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return LatentDist(mean, jnp.clip(logvar, *LOGVAR_RANGE))

  def decode(self, z_BhwC) -> jax.Array:
    """Unscaled latents -> images (float32, about [-1, 1])."""
    if self.use_post_quant_conv:
      z_BhwC = self.post_quant_conv(z_BhwC.astype(self.dtype))
    return self.decoder(z_BhwC).astype(jnp.float32)

  def __call__(self, x_BHWC, rng: jax.Array | None = None):
    """Training forward: reconstruction of x from a posterior sample (the mean if no rng)."""
    dist = self.encode(x_BHWC)
    z = dist.mode() if rng is None else dist.sample(rng)
    return self.decode(z), dist

  def scale_latents(self, z):
    """Unscaled VAE latents -> what the diffusion model sees."""
    return (z - self.shift_factor) * self.scaling_factor

  def unscale_latents(self, z):
    """The diffusion model's latents -> what `decode` takes."""
    return z / self.scaling_factor + self.shift_factor


def vae_preset(name: str, **overrides) -> AutoencoderKL:
  """A VAE by preset name (see PRESETS) with field overrides."""
  if name not in PRESETS:
    raise InputError(f"vae preset {name!r} is not one of {sorted(PRESETS)}")
  return AutoencoderKL(**{**PRESETS[name], **overrides})


ARCH_FIELDS = tuple(f.name for f in dataclasses.fields(AutoencoderKL)
                    if f.name not in ("parent", "name", "dtype", "param_dtype"))


def create_vae(vae_config) -> AutoencoderKL:
  """From a dict/ConfigDict: `name` (a preset, optional) plus any AutoencoderKL fields."""
  fields = dict(vae_config)
  if "preset" in fields:  # the field's old name (runs saved before it was renamed)
    if "name" in fields:
      raise InputError("config.vae has both name and preset: preset is the old name of "
                       "config.vae.name; remove it")
    warnings.warn("config.vae.preset is now config.vae.name: rename it in your config")
    fields["name"] = fields.pop("preset")
  preset_name = fields.pop("name", None)
  unknown = sorted(set(fields) - set(ARCH_FIELDS) - {"dtype", "param_dtype"})
  if unknown:
    raise InputError(f"config.vae has fields {unknown} that AutoencoderKL does not take; "
                     f"known: {sorted(ARCH_FIELDS)} and name, dtype, param_dtype")
  for key in ("dtype", "param_dtype"):
    if key in fields:
      fields[key] = jnp.dtype(fields[key])
  if "block_out_channels" in fields:
    fields["block_out_channels"] = tuple(fields["block_out_channels"])
  vae = vae_preset(preset_name, **fields) if preset_name else AutoencoderKL(**fields)
  vae.check_config()
  return vae


def vae_arch(vae: AutoencoderKL) -> dict:
  """The JSON-able architecture fields of a VAE (what create_vae takes back)."""
  arch = {k: getattr(vae, k) for k in ARCH_FIELDS}
  arch["block_out_channels"] = list(arch["block_out_channels"])
  return arch
