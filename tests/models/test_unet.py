import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict

from dit_jax.config import load_config
from dit_jax.models import create_model, example_inputs, flops
from dit_jax.models.unet import CONDITIONINGS, PRESET_INPUTS, PRESETS, UNet, layout, unet

B, SIDE, CLASSES = 2, 8, 4


def tiny(**overrides):
  kw = dict(base_channels=8, num_groups=4, num_classes=CLASSES, attention_levels=(1,),
            num_heads=2)
  return unet("UNet-small", **{**kw, **overrides})


def inputs(model, side=SIDE, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(B, side, side, 1)), jnp.float32)
  t = jnp.asarray([0.2, 0.7], jnp.float32)
  cond = {"label": jnp.array([1, 3])}
  if model.text_dim:
    cond["text"] = jnp.asarray(rng.normal(size=(B, 3, model.text_dim)), jnp.float32)
  return x, t, cond


def init(model, side=SIDE):
  """The real initial variables. An 'rbg' key compiles about 3x faster than threefry on CPU
  (one random op per parameter); only where the initial values matter."""
  key = jax.random.key(0, impl="rbg")
  return nn.unbox(jax.jit(model.init)(key, *inputs(model, side)))


def random_variables(model, side=SIDE, scale=0.1, seed=1):
  """N(0, scale) parameters of the model's shapes (every path carries signal, unlike the
  partly zero init); eval_shape + numpy avoids compiling the init."""
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), *inputs(model, side)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda v: jnp.asarray(scale * rng.normal(size=v.shape), v.dtype), shapes)


_APPLY = {}


def apply(model, variables, x, t, cond, **kw):
  """model.apply jitted once per (model, keyword arguments)."""
  key = (repr(model), tuple(sorted(kw.items())))
  if key not in _APPLY:
    _APPLY[key] = jax.jit(lambda v, x, t, c: model.apply(v, x, t, c, **kw))
  return np.asarray(_APPLY[key](variables, x, t, cond))


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_keeps_the_input_shape_and_counts_its_params(name):
  model = unet(name)
  H, W, C = PRESET_INPUTS[name]
  x, t, cond = example_inputs(model, (H, W, C), 2)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, cond)
  out = jax.eval_shape(model.apply, variables, x, t, cond)
  assert out.shape == (2, H, W, 2 * C if model.learn_sigma else C)
  params = sum(leaf.size for leaf in jax.tree.leaves(variables))
  assert params == sum(model.counts(H, W, C)[1].values())
  # Every parameter carries logical axis names (the sharding rules read them).
  boxed = jax.tree.leaves(variables, is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
  assert all(isinstance(v, nn.LogicallyPartitioned) for v in boxed)


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
@pytest.mark.parametrize("downsample,upsample,text_dim", [
    ("conv", "transpose", 0), ("max", "resize", 0), ("avg", "transpose", 6)])
def test_analytic_params_equal_the_module(conditioning, downsample, upsample, text_dim):
  model = tiny(conditioning=conditioning, downsample=downsample, upsample=upsample,
               channel_mult=(1, 2, 2), text_dim=text_dim, num_res_blocks=2)
  x, t, cond = example_inputs(model, (16, 16, 3))
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, cond)
  assert sum(model.counts(16, 16, 3)[1].values()) == sum(
      leaf.size for leaf in jax.tree.leaves(variables))


def test_flops_closed_form_by_hand():
  """One level, one res block, no attention, add: conv_in, res block (2 convs + emb),
  middle (2 res blocks), decoder (2 res blocks reading 8-channel skips: 16 -> 8 with a 1x1),
  conv_out; plus the time MLP (256 E + E E), E = 32."""
  model = UNet(base_channels=8, channel_mult=(1,), num_res_blocks=1, num_groups=4,
               num_classes=0, conditioning="add")
  hw, c, E = 6 * 6, 8, 32
  res = hw * 9 * (c * c + c * c) + E * c
  dec = hw * 9 * (2 * c * c + c * c) + E * c + hw * 2 * c * c
  expected = 256 * E + E * E + hw * 9 * 1 * c + 3 * res + 2 * dec + hw * c * 1
  assert sum(model.counts(6, 6, 1)[0].values()) == expected


@pytest.mark.parametrize("conditioning,downsample,upsample", [
    ("add", "conv", "transpose"), ("cross_attn", "max", "resize")])
def test_xla_cost_analysis_agrees(conditioning, downsample, upsample):
  """XLA counts 2 flops per multiply-add, skips the zero padding of 'same' convs (fewer taps
  at borders) and adds elementwise work (norms, SiLU): at 64x64 the latter wins slightly."""
  model = unet("UNet-small", conditioning=conditioning, downsample=downsample,
               upsample=upsample)
  analytic = sum(model.counts(64, 64, 1)[0].values())
  assert 1.0 < flops.xla_flops(model, 64, 64, 1) / 2 / analytic < 1.05


def test_output_is_zero_at_init_and_skips_balance():
  """conv_out starts at zero (so does every res block's second conv); each decoder res
  block pops exactly one of the encoder's saved features."""
  model = tiny()
  x, t, cond = inputs(model)
  assert np.abs(apply(model, init(model), x, t, cond)).max() == 0.0
  steps = layout(tiny(num_res_blocks=2, channel_mult=(1, 2, 2)))
  pushed = 1 + sum(s.push for s in steps)  # conv_in's output is the first
  assert pushed == sum(bool(s.skip) for s in steps) == 3 * 3


def zero_params(variables, keep):
  """A copy with every parameter whose path contains one of `keep`... set to zero."""
  flat = flatten_dict(variables)
  return unflatten_dict({k: jnp.zeros_like(v) if any(p in k for p in keep) else v
                         for k, v in flat.items()})


@pytest.mark.parametrize("conditioning,path", [
    ("add", "emb"), ("scale_shift", "emb"), ("cross_attn", "cross_attn")])
def test_each_injection_makes_the_output_depend_on_time_and_class(conditioning, path):
  """Moving t or the label changes the output; zeroing the method's own injection weights
  (res-block embedding projections, or the cross-attention) removes both dependences, so
  time and class enter only the way `conditioning` says."""
  model = tiny(conditioning=conditioning)
  variables = random_variables(model)
  x, t, cond = inputs(model)
  other_label = {"label": cond["label"] + 1}

  def changes(v):  # relative change of the output when t moves, and when the label does
    out = apply(model, v, x, t, cond)
    scale = np.abs(out).max()
    return (np.abs(apply(model, v, x, t + 0.3, cond) - out).max() / scale,
            np.abs(apply(model, v, x, t, other_label) - out).max() / scale)

  assert min(changes(variables)) > 1e-3
  assert max(changes(zero_params(variables, [path]))) < 1e-6


def test_text_features_are_cross_attended_and_nulled():
  model = tiny(conditioning="add", text_dim=6)
  assert model.condition_keys == ("label", "text")
  variables = random_variables(model)
  x, t, cond = inputs(model)
  out = apply(model, variables, x, t, cond)
  null = model.null_condition(cond)
  assert np.all(np.asarray(null["text"]) == 0) and np.all(null["label"] == CLASSES)
  nulled = apply(model, variables, x, t, dict(cond, text=null["text"]))
  assert np.abs(nulled - out).max() > 1e-4 * np.abs(out).max()  # float32 noise: ~1e-7
  cut = zero_params(variables, ["text_proj"])
  null_text = dict(cond, text=null["text"])
  np.testing.assert_array_equal(apply(model, cut, x, t, cond), apply(model, cut, x, t, null_text))
  with pytest.raises(ValueError, match="precomputed text"):
    model.apply(variables, x, t, {"label": cond["label"]})


def test_skip_connections_carry_information():
  model = tiny()
  variables = random_variables(model)
  x, t, cond = inputs(model)
  out = apply(model, variables, x, t, cond)
  cut = apply(model, variables, x, t, cond, zero_skips=True)
  assert np.abs(out - cut).mean() > 1e-2 * np.abs(out).mean()


@pytest.mark.parametrize("downsample,upsample", [
    ("conv", "transpose"), ("max", "resize"), ("avg", "transpose")])
def test_resampling_shapes(downsample, upsample):
  """Level l of a 16x16 input is (16 / 2^l)^2 at base * mult[l] channels, on the way down
  and up; strided conv and resize-conv are 3x3 kernels, transposed conv 2x2, pooling none."""
  model = tiny(channel_mult=(1, 2, 3), downsample=downsample, upsample=upsample,
               attention_levels=())
  x, t, cond = inputs(model, side=16)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, cond)
  out, state = jax.eval_shape(
      lambda v: model.apply(v, x, t, cond, capture_intermediates=True), variables)
  inter = state["intermediates"]
  for level, mult in enumerate((1, 2, 3)):
    side = 16 >> level
    for name in (f"enc{level}_res0", f"dec{level}_res0"):
      assert inter[name]["__call__"][0].shape == (B, side, side, 8 * mult)
  assert out.shape == x.shape
  params = nn.unbox(variables)["params"]
  if downsample == "conv":
    assert params["down0"]["kernel"].shape == (3, 3, 8, 8)
  else:
    assert "down0" not in params
  assert params["up2"]["kernel"].shape == ((2, 2) if upsample == "transpose" else (3, 3)) + (
      24, 24)


def test_bad_configs_give_clear_errors():
  x, t, cond = inputs(tiny(), side=10)
  with pytest.raises(ValueError, match=r"multiple of 4.*channel_mult"):
    tiny(channel_mult=(1, 2, 2)).init(jax.random.PRNGKey(0), x, t, cond)
  with pytest.raises(ValueError, match="num_groups"):
    tiny(num_groups=3).check_config(8, 8)
  with pytest.raises(ValueError, match="attention_levels"):
    tiny(conditioning="cross_attn", attention_levels=()).check_config()
  with pytest.raises(ValueError, match="attention_levels"):
    tiny(attention_levels=(2,)).check_config()
  with pytest.raises(ValueError, match="downsample"):
    tiny(downsample="stride").check_config()
  with pytest.raises(ValueError, match="unknown U-Net preset"):
    unet("UNet-huge")
  with pytest.raises(ValueError, match="label"):
    tiny().init(jax.random.PRNGKey(0), x[:, :8, :8], t, None)


def test_create_model_from_configs():
  config = load_config("configs/unet.py:cross_attn")
  model = create_model(config.model)
  assert isinstance(model, UNet) and model.conditioning == "cross_attn"
  assert model.condition_keys == ("label",)
  adm = create_model({"name": "UNet-ADM-256", "channel_mult": [1, 2], "dtype": "bfloat16"})
  assert adm.channel_mult == (1, 2) and adm.dtype == jnp.bfloat16 and adm.num_classes == 1000
  with pytest.raises(ValueError, match="patch_size"):
    create_model({"name": "UNet-small", "patch_size": 2})


def test_cli_flops_reports_the_unet_config(capsys):
  from dit_jax.cli import main
  main(["flops", "--config", "configs/unet.py:add", "--format", "json",
        "--config.model.channel_mult=(1, 2)"])
  (row,) = json.loads(capsys.readouterr().out)
  model = unet("UNet-small", conditioning="add")
  counts, params = model.counts(8, 8, 1)
  assert row["model"] == "UNet-small" and row["params"] == sum(params.values())
  assert row["gflops"] == pytest.approx(sum(counts.values()) / 1e9)
