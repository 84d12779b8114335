"""Receptive fields: the lecture's formula, per level of a U-Net, and an empirical measurement.

For a stack of layers with filter sizes F_j and strides S_j, the receptive field of a unit
after layer k, in input pixels, is

    R_k = 1 + sum_{j=1..k} (F_j - 1) prod_{i<j} S_i

(the product is the "jump": input pixels between neighbouring units before layer j). An
upsampling by 2 (nearest resize, or a 2x2 transposed conv with stride 2) gives every output
pixel exactly one input pixel: a layer (F, S) = (1, 1/2) that halves the jump.

In a U-Net the longest path runs through every layer in order (encoder, middle, decoder); the
skip connections are shortcuts through a subset of the layers, so the trunk's receptive field
is the network's. Self-attention mixes all pixels: from the first attention block on, the
receptive field is the whole image (`math.inf` here).

    python experiments/receptive_field.py     # the table of the three U-Net presets
"""
import math
from contextlib import nullcontext
from fractions import Fraction

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

UPSAMPLE = (1, Fraction(1, 2))


def receptive_field(layers) -> list:
  """[R_0 = 1, R_1, ..., R_n] for layers [(F_1, S_1), ..., (F_n, S_n)] (S may be a Fraction);
  an F of math.inf (global attention) makes every later R infinite."""
  fields, jump, r = [1], Fraction(1), 1
  for filter_size, stride in layers:
    r = math.inf if math.isinf(filter_size) or math.isinf(r) else r + (filter_size - 1) * jump
    jump *= Fraction(stride)
    fields.append(r if math.isinf(r) or r != int(r) else int(r))
  return fields


def step_layers(model, step) -> list:
  """The (filter, stride) layers a U-Net step puts on the trunk (1x1 convs change nothing)."""
  if step.op == "res":
    return [(3, 1), (3, 1)]
  if step.op == "attn":
    return [(math.inf, 1)]
  if step.op == "down":
    return [(3, 2)] if model.downsample == "conv" else [(2, 2)]
  return [UPSAMPLE] if model.upsample == "transpose" else [UPSAMPLE, (3, 1)]


def unet_layers(model) -> list[tuple[str, list]]:
  """[(stage name, layers)] along the U-Net trunk: conv_in, every step, conv_out (1x1)."""
  from dit_jax.models.unet import layout  # models import nothing from here
  return ([("conv_in", [(3, 1)])] + [(s.name, step_layers(model, s)) for s in layout(model)]
          + [("conv_out", [(1, 1)])])


def _group(name: str) -> str:
  """'enc1_res0' -> 'enc1', 'mid_attn' -> 'mid', 'down0' -> 'down0', 'conv_in' -> 'conv_in'."""
  return name if name.startswith("conv") else name.split("_")[0]


def unet_receptive_fields(model) -> list[dict]:
  """Receptive field (input pixels) and jump after conv_in, at the end of each encoder level
  (before its downsampling), after the middle block, at the end of each decoder level (before
  its upsampling) and at the output. `R_conv` counts the convolutions only; `R` becomes
  inf (the whole image) once an attention block has been passed."""
  stages = unet_layers(model)
  rows, layers = [], []
  for i, (name, stage) in enumerate(stages):
    layers += stage
    group = _group(name)
    last_of_group = i + 1 == len(stages) or _group(stages[i + 1][0]) != group
    if not last_of_group or group.startswith(("down", "up")):
      continue
    label = {"conv_in": "conv_in", "mid": "middle", "conv_out": "output"}.get(
        group, f"{'encoder' if group.startswith('enc') else 'decoder'} {group[3:]}")
    conv_layers = [layer for layer in layers if not math.isinf(layer[0])]
    jump = math.prod(Fraction(s) for _, s in layers)
    rows.append(dict(stage=label, jump=int(jump), R=receptive_field(layers)[-1],
                     R_conv=receptive_field(conv_layers)[-1]))
  return rows


def _frozen_group_norm(next_fun, args, kwargs, context):
  """Method interceptor: GroupNorm with its statistics held constant for differentiation.
  The forward value is unchanged; the gradient is scale / std per channel, so it no longer
  reaches every pixel through the per-image mean and variance."""
  module = context.module
  if not (isinstance(module, nn.GroupNorm) and context.method_name == "__call__"):
    return next_fun(*args, **kwargs)
  x = args[0].astype(jnp.float32)
  x_const = jax.lax.stop_gradient(x)
  B, C, G = x.shape[0], x.shape[-1], module.num_groups
  var_BG = x_const.reshape(B, -1, G, C // G).var(axis=(1, 3))
  inv_BC = jnp.repeat(jax.lax.rsqrt(var_BG + module.epsilon), C // G, axis=-1)
  slope_BC = inv_BC * nn.unbox(module.get_variable("params", "scale"))
  slope = slope_BC.reshape(B, *(1,) * (x.ndim - 2), C)
  return next_fun(x_const, **kwargs) + (x - x_const) * slope


def gradient_support(fn, x_HWC: jax.Array, pixels, freeze_norm_statistics: bool = True):
  """Empirical receptive fields of output pixels [(row, col), ...] of fn: (B, H, W, C) ->
  (B, H, W, C') (a plain function, not a jitted one, so that the norm interceptor reaches its
  trace): for each pixel, the height and width of the bounding box of the input pixels where
  the gradient of that output (summed over channels) is non-zero.

  GroupNorm's per-image statistics couple every pixel to every other, like attention; with
  `freeze_norm_statistics` they are held constant for the gradient (values unchanged), so the
  support is that of the convolutions, which the formula describes.
  """
  def grads(x_HWC):  # one vjp, pulled back from a one-hot cotangent per pixel
    out_HWC, pullback = jax.vjp(lambda x: fn(x[None])[0], x_HWC)
    onehot_PHWC = jnp.stack([jnp.zeros_like(out_HWC).at[r, c].set(1.0) for r, c in pixels])
    return jax.vmap(pullback)(onehot_PHWC)[0]

  frozen = nn.intercept_methods(_frozen_group_norm) if freeze_norm_statistics else nullcontext()
  with frozen:  # jitted afresh each call: a cached trace would ignore the interceptor
    grads_PHWC = np.asarray(jax.jit(grads)(x_HWC.astype(jnp.float32)))
  supports = []
  for grad_HWC in grads_PHWC:
    rows, cols = np.nonzero(np.abs(grad_HWC).sum(-1))
    supports.append((int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1))
                    if len(rows) else (0, 0))
  return supports


def main():
  """The convolutions' (jump, R) after each stage of the presets; '(attention: global)' where
  self-attention first makes the field the whole image."""
  from dit_jax.models.unet import unet
  presets = ("UNet-small", "UNet-ADM-256", "UNet-SD-latent")
  fields = {name: unet_receptive_fields(unet(name)) for name in presets}
  stages = list(dict.fromkeys(r["stage"] for name in sorted(presets, key=lambda n: -len(fields[n]))
                              for r in fields[name]))
  print("| stage | " + " | ".join(presets) + " |")
  print("|---" * (len(presets) + 1) + "|")
  for stage in stages:
    cells = []
    for name in presets:
      rows = fields[name]
      i = next((i for i, r in enumerate(rows) if r["stage"] == stage), None)
      first_global = i is not None and math.isinf(rows[i]["R"]) and (
          i == 0 or not math.isinf(rows[i - 1]["R"]))
      cells.append("" if i is None else f"{rows[i]['jump']}, {rows[i]['R_conv']}"
                   + (" (attention: global)" if first_global else ""))
    print(f"| {stage} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
