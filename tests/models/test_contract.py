"""The model contract: every family declares its conditions, example inputs, null condition,
output channels, flop count and time convention the same way."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.flow.paths import ddpm_step_to_t, t_to_ddpm_step
from dit_jax.models import (KEYS, Denoiser, check_denoiser, class_count, cond_spec, contract,
                            example_condition, example_inputs)
from dit_jax.models.dit import dit
from dit_jax.models.mmdit import MMDiT, TextDiT
from dit_jax.models.unet import unet
from dit_jax.studies.reports import flops_row

TEXT = dict(patch_size=4, hidden_size=32, num_heads=2, text_length=5, text_width=16,
            text_depth=1, text_heads=2)
MODELS = {  # name -> (model, image shape, expected condition keys)
    "DiT label": (dit("DiT-S/4", depth=1, hidden_size=32, num_heads=2, num_classes=7),
                  (8, 8, 3), ("label",)),
    "DiT unconditional": (dit("DiT-S/4", depth=1, hidden_size=32, num_heads=2, num_classes=0,
                              learn_sigma=False), (8, 8, 3), ()),
    "UNet label+text": (unet("UNet-small", base_channels=8, num_groups=4, num_classes=3,
                             text_dim=6, text_length=4), (8, 8, 1), ("label", "text")),
    "MMDiT tokens": (MMDiT(depth_double=1, vocab_size=11, **TEXT), (8, 8, 3),
                     ("text_tokens", "text_mask")),
    "MMDiT embeddings": (MMDiT(depth_double=1, depth_single=1, text_source="embeddings",
                               context_dim=12, pooled_dim=6, guidance_embed=True,
                               image_conditioning=True, cond_image_shape=(4, 4, 3), **TEXT),
                         (8, 8, 3), ("text", "text_mask", "pooled", "guidance", "cond_image")),
    "TextDiT": (TextDiT(depth=1, text_conditioning="cross_attn", vocab_size=11, **TEXT),
                (8, 8, 3), ("text_tokens", "text_mask")),
}


@pytest.mark.parametrize("name", MODELS)
def test_every_family_implements_the_contract(name):
  model, shape, keys = MODELS[name]
  assert isinstance(model, Denoiser)
  check_denoiser(model)
  assert model.condition_keys == keys == tuple(model.condition_spec)
  for key, spec in model.condition_spec.items():  # one meaning per key, whatever the family
    assert (spec.dtype, spec.meaning) == (np.dtype(KEYS[key][0]), KEYS[key][1])


@pytest.mark.parametrize("name", MODELS)
def test_example_inputs_trace_the_real_module(name):
  """The spec's shapes are what the module accepts; the output has output_channels(C)."""
  model, (h, w, c), keys = MODELS[name]
  x, t, cond = example_inputs(model, (h, w, c), batch=3)
  assert x.shape == (3, h, w, c) and t.shape == (3,)
  assert tuple(cond or ()) == keys
  for key, value in (cond or {}).items():
    assert value.shape == (3, *model.condition_spec[key].shape)
    assert value.dtype == model.condition_spec[key].dtype
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, cond)
  out = jax.eval_shape(model.apply, variables, x, t, cond)
  assert out.shape == (3, h, w, model.output_channels(c))
  null = model.null_condition(example_condition(model, 3))
  assert jax.tree.map(lambda a: (a.shape, a.dtype), null) == jax.tree.map(
      lambda a: (a.shape, a.dtype), example_condition(model, 3))


@pytest.mark.parametrize("name", MODELS)
def test_flops_report_needs_no_family_switch(name):
  model, (h, w, c), _ = MODELS[name]
  row = flops_row(model, name, h, w, c)
  assert row["gflops"] == pytest.approx(sum(model.forward_flops(h, w, c).values()) / 1e9)
  assert row["gflops"] > 0
  # Closed-form parameters (where the family has them) equal the module's own count.
  x, t, cond = example_inputs(model, (h, w, c))
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, cond)
  assert row["params"] == sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("name", MODELS)
def test_attention_shapes_are_those_the_module_computes(name, monkeypatch):
  """Every (head width, T * S) the contract declares is an attention the traced module runs
  (recorded from nn.attention.attention), widest scores first."""
  attention_module = importlib.import_module("dit_jax.nn.attention")  # nn exports a function
  model, (h, w, c), _ = MODELS[name]
  seen, original = set(), attention_module.attention

  def recording(q_BTNH, k_BSNH, *args, **kw):
    seen.add((q_BTNH.shape[-1], q_BTNH.shape[1] * k_BSNH.shape[1]))
    return original(q_BTNH, k_BSNH, *args, **kw)
  monkeypatch.setattr(attention_module, "attention", recording)
  x, t, cond = example_inputs(model, (h, w, c))
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, cond)
  jax.eval_shape(model.apply, variables, x, t, cond)
  declared = model.attention_shapes(h, w, c)
  assert declared and set(declared) <= seen
  assert [s for _, s in declared] == sorted((s for _, s in declared), reverse=True)


def test_label_means_class_ids_and_text_means_float_features():
  assert class_count(MODELS["DiT label"][0]) == 7
  assert class_count(MODELS["MMDiT tokens"][0]) == 0  # no num_classes=0 stand-in any more
  assert not hasattr(MODELS["MMDiT tokens"][0], "num_classes")
  assert cond_spec("text_tokens").dtype == np.int32 and cond_spec("text").dtype == np.float32
  with pytest.raises(ValueError, match="not one of"):
    cond_spec("captions")


def test_contract_violations_are_named():
  with pytest.raises(TypeError, match="forward_flops"):
    check_denoiser(object())
  bad = dit("DiT-S/4", depth=1, hidden_size=32, num_heads=2, time_input="sigma")
  with pytest.raises(ValueError, match="time_input"):
    check_denoiser(bad)


def test_ddpm_step_is_the_inverse_of_the_objective_time():
  n = np.arange(1000)
  np.testing.assert_array_equal(contract.ddpm_step(ddpm_step_to_t(n), 1000), n)
  t = np.linspace(0, 1, 37)
  np.testing.assert_array_equal(contract.ddpm_step(t, 1000), t_to_ddpm_step(t, 1000))


def test_ddpm_step_model_embeds_the_step_of_our_time():
  """time_input='ddpm_step' at t equals a unit-time model handed the step n itself."""
  kw = dict(depth=1, hidden_size=32, num_heads=2, num_classes=3, time_scale=1.0)
  stepped = dit("DiT-S/4", time_input="ddpm_step", **kw)
  plain = dit("DiT-S/4", **kw)
  x, _, _ = example_inputs(stepped, (8, 8, 3), batch=3, abstract=False)
  x = jax.random.normal(jax.random.PRNGKey(1), x.shape)
  n = jnp.array([0, 437, 999])
  cond = {"label": jnp.array([0, 1, 3])}
  params = plain.init(jax.random.PRNGKey(0), x, n.astype(jnp.float32), cond)
  params = jax.tree.map(lambda p: p + 0.05, params)  # off the zero init: time reaches the output
  got = stepped.apply(params, x, ddpm_step_to_t(n), cond)
  want = plain.apply(params, x, n.astype(jnp.float32), cond)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  other = plain.apply(params, x, ddpm_step_to_t(n), cond)  # t itself: a different input
  assert np.abs(np.asarray(other - want)).max() > 1e-3
