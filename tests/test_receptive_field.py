import importlib.util
import math
from fractions import Fraction
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.models.unet import unet

# The receptive-field tools are experiment code (experiments/receptive_field.py), not library.
_SPEC = importlib.util.spec_from_file_location(
    "receptive_field", Path(__file__).resolve().parents[1] / "experiments" / "receptive_field.py")
rf = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(rf)
UPSAMPLE, _frozen_group_norm, gradient_support = rf.UPSAMPLE, rf._frozen_group_norm, rf.gradient_support
receptive_field, unet_receptive_fields = rf.receptive_field, rf.unet_receptive_fields


def brute_force_1d(layers) -> int:
  """Inputs that unit 0 of the last layer sees, by expanding index sets layer by layer:
  unit i of a (F, S) layer reads units floor(i * S) .. floor(i * S) + F - 1 below it (an
  upsampling (1, 1/2) reads unit floor(i / 2))."""
  units = {0}
  for filter_size, stride in reversed(layers):
    units = {math.floor(i * Fraction(stride)) + k for i in units for k in range(filter_size)}
  return max(units) - min(units) + 1


def test_formula_closed_forms():
  assert receptive_field([(3, 1)] * 5) == [1, 3, 5, 7, 9, 11]       # 1 + 2n
  assert receptive_field([(2, 2)] * 4)[-1] == 16                     # 2^n
  # conv 3, conv 3, pool 2/2, conv 3: 1 + 2 + 2 + 1 + 2 * 2 = 10.
  assert receptive_field([(3, 1), (3, 1), (2, 2), (3, 1)]) == [1, 3, 5, 6, 10]
  assert receptive_field([(3, 2), (3, 2), UPSAMPLE, (3, 1)])[-1] == 1 + 2 + 4 + 0 + 2 * 2
  assert math.isinf(receptive_field([(3, 1), (math.inf, 1), (3, 1)])[-1])


def test_formula_matches_brute_force_on_random_stacks():
  rng = np.random.default_rng(0)
  for _ in range(200):
    n = rng.integers(1, 8)
    layers = [(int(rng.integers(1, 6)), int(rng.integers(1, 4))) for _ in range(n)]
    assert receptive_field(layers)[-1] == brute_force_1d(layers), layers


def perturbed_apply(model, side: int):
  """fn(x) of a model with random N(0, 0.2) parameters (at init the zero-initialised second
  convs would hide every residual branch from the gradient); eval_shape + numpy avoids
  compiling the init."""
  x = jax.ShapeDtypeStruct((1, side, side, 1), jnp.float32)
  t, cond = jnp.array([0.3]), {"label": jnp.array([3])}
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, cond))
  rng = np.random.default_rng(1)
  variables = jax.tree.map(lambda v: jnp.asarray(0.2 * rng.normal(size=v.shape), v.dtype), shapes)
  return lambda x: model.apply(variables, x, t, cond)  # not jitted: see gradient_support


def small(**overrides):
  return unet("UNet-small", **{**dict(attention_levels=(), base_channels=8, num_groups=4),
                               **overrides})


@pytest.mark.parametrize("downsample,upsample,expected", [
    ("conv", "transpose", 57), ("avg", "resize", 58), ("max", "transpose", 56)])
def test_unet_output_field_matches_gradient_support(downsample, upsample, expected):
  """Formula on the trunk == bounding box of d out[pixel] / d x (norm statistics frozen),
  for two neighbouring pixels (the alignment of stride-2 layers differs between them)."""
  model = small(downsample=downsample, upsample=upsample)
  assert unet_receptive_fields(model)[-1]["R"] == expected
  side = 64
  fn = perturbed_apply(model, side)
  x = jax.random.normal(jax.random.PRNGKey(2), (side, side, 1))
  pixels = [(side // 2, side // 2), (side // 2 + 1, side // 2 + 1)]
  assert gradient_support(fn, x, pixels) == [(expected, expected)] * 2


def test_three_level_field_matches_gradient_support():
  model = small(channel_mult=(1, 1, 1), base_channels=4, num_groups=2, downsample="avg")
  rows = {r["stage"]: r for r in unet_receptive_fields(model)}
  assert [rows[f"encoder {lv}"]["jump"] for lv in range(3)] == [1, 2, 4]
  # conv_in 3 + 2 convs -> 7; pool -> 8; 2 convs at jump 2 -> 16; pool (jump 2) -> 18;
  # 2 convs at jump 4 -> 34.
  assert [rows[f"encoder {lv}"]["R"] for lv in range(3)] == [7, 16, 34]
  R = rows["output"]["R"]
  side = 144
  assert R < side
  fn = perturbed_apply(model, side)
  x = jax.random.normal(jax.random.PRNGKey(3), (side, side, 1))
  assert gradient_support(fn, x, [(side // 2, side // 2 + 1)]) == [(R, R)]


def test_attention_and_norm_statistics_make_the_field_global():
  """With attention the formula says inf and one output pixel depends on every input pixel,
  though the convolutions alone (R_conv = 57) see less than the 64x64 image; GroupNorm's
  per-image statistics do the same unless frozen."""
  side = 64
  x = jax.random.normal(jax.random.PRNGKey(4), (side, side, 1))
  attn = small(attention_levels=(1,))
  row = unet_receptive_fields(attn)[-1]
  assert math.isinf(row["R"]) and row["R_conv"] == 57
  assert gradient_support(perturbed_apply(attn, side), x, [(32, 32)]) == [(side, side)]
  conv_only = perturbed_apply(small(), side)
  assert gradient_support(conv_only, x, [(32, 32)]) == [(57, 57)]
  assert gradient_support(conv_only, x, [(32, 32)], freeze_norm_statistics=False) == [
      (side, side)]


def test_frozen_norm_statistics_keep_the_forward_value():
  fn = perturbed_apply(small(), 16)
  x = jax.random.normal(jax.random.PRNGKey(5), (1, 16, 16, 1))
  with nn.intercept_methods(_frozen_group_norm):
    frozen = jax.jit(lambda x: fn(x))(x)  # a fresh function: traced inside the context
  np.testing.assert_allclose(frozen, jax.jit(lambda x: fn(x))(x), rtol=1e-5, atol=1e-5)
  assert np.abs(frozen).max() > 1e-2


def test_preset_levels():
  """ADM-256 and SD-latent: jumps double per level; attention makes every field global from
  the first attention level (ADM: level 3 = 32x32; SD: level 0)."""
  adm = {r["stage"]: r for r in unet_receptive_fields(unet("UNet-ADM-256"))}
  assert [adm[f"encoder {lv}"]["jump"] for lv in range(6)] == [1, 2, 4, 8, 16, 32]
  assert adm["encoder 2"]["R"] == 65 and math.isinf(adm["encoder 3"]["R"])
  sd = {r["stage"]: r for r in unet_receptive_fields(unet("UNet-SD-latent"))}
  assert math.isinf(sd["encoder 0"]["R"]) and sd["encoder 0"]["R_conv"] == 11
