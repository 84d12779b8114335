import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dit_jax.models import example_inputs, flops
from dit_jax.models.dit import CONDITIONINGS, POSENCS, PRESETS, REMAT_POLICIES, DiTBlock, dit
from dit_jax.nn.posenc import grid_ids

H, W, C, CLASSES = 8, 8, 2, 4


def tiny(**overrides):
  kw = dict(hidden_size=32, num_heads=2, depth=2, num_classes=CLASSES, learn_sigma=False)
  return dit("S/2", **{**kw, **overrides})


def inputs(B=4, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(B, H, W, C)), jnp.float32)
  t = jnp.asarray(rng.uniform(size=B), jnp.float32)
  return x, t, {"label": jnp.arange(B) % CLASSES}


def init(model, seed=0):
  x, t, cond = inputs()
  return nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(seed), x, t, cond))


def perturbed(variables, scale=0.05, seed=1):
  """Parameters moved off their (partly zero) init, so every path carries signal."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda l: l + scale * rng.normal(size=l.shape).astype(np.float32),
                      variables)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_shapes_and_params(name):
  model = dit(name)
  x, t, cond = example_inputs(model, (32, 32, 4), 2)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, cond)
  out = jax.eval_shape(model.apply, variables, x, t, cond)
  assert out.shape == (2, 32, 32, 8) and out.dtype == jnp.float32
  params = sum(leaf.size for leaf in jax.tree.leaves(variables))
  assert round(params / 1e6) == pytest.approx(flops.PAPER_PARAMS_M[name[4:].split("/")[0]], abs=1)


def test_xl2_scanned_stacks_layers_with_partition_name():
  model = dit("DiT-XL/2", scan_layers=True)
  x, t, cond = example_inputs(model, (32, 32, 4))
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, cond)
  qkv = variables["params"]["blocks"]["attn"]["qkv"]["kernel"]
  assert qkv.value.shape == (28, 1152, 3, 16, 72)
  assert tuple(nn.get_partition_spec(variables)["params"]["blocks"]["attn"]["qkv"]["kernel"]) == (
      "layers", "embed", "qkv", "heads", "kv")
  assert sum(l.size for l in jax.tree.leaves(variables)) == 674_834_720  # 675M as in the paper


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_output_is_exactly_zero_at_init(conditioning):
  model = tiny(conditioning=conditioning)
  x, t, cond = inputs()
  assert float(jnp.abs(model.apply(init(model), x, t, cond)).max()) == 0.0


def test_adaln_zero_block_is_identity_at_init():
  block = DiTBlock(num_heads=2, conditioning="adaln_zero")
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 16))
  c = jax.random.normal(jax.random.PRNGKey(1), (2, 16)) * 10
  variables = jax.jit(block.init)(jax.random.PRNGKey(2), x, c, None)
  np.testing.assert_array_equal(block.apply(variables, x, c, None), x)
  moved = perturbed(nn.unbox(variables))
  assert not np.allclose(block.apply(moved, x, c, None), x)


@pytest.mark.parametrize("conditioning", ["adaln", "cross_attn", "in_context"])
def test_other_blocks_are_not_identity_at_init(conditioning):
  """Only the gate of adaLN-Zero closes the residual branches at init."""
  block = DiTBlock(num_heads=2, conditioning=conditioning)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 16))
  c = jax.random.normal(jax.random.PRNGKey(1), (2, 16))
  variables = jax.jit(block.init)(jax.random.PRNGKey(2), x, c, c[:, None])
  assert not np.allclose(block.apply(variables, x, c, c[:, None]), x)


def _fixed_image_target(rng):
  """label -> a fixed random image: needs absolute positions (sin-cos) to be learnable."""
  images = jnp.asarray(rng.normal(size=(CLASSES, H, W, C)), jnp.float32)
  return lambda x, labels: images[labels]


def _per_class_affine_target(rng):
  """label -> a per-class gain and offset of the input: translation-equivariant, so learnable
  with relative positions only (RoPE gives a token no absolute position to paint from)."""
  gain = jnp.asarray(rng.uniform(-2, 2, size=(CLASSES, C)), jnp.float32)
  offset = jnp.asarray(rng.normal(size=(CLASSES, C)), jnp.float32)
  return lambda x, labels: gain[labels][:, None, None] * x + offset[labels][:, None, None]


@pytest.mark.parametrize("conditioning,posenc", [(c, "sincos") for c in CONDITIONINGS] + [
    ("adaln_zero", p) for p in ("rope_axial", "rope_mixed")] + [("in_context", "rope_axial")])
def test_each_design_learns_a_label_dependent_target(conditioning, posenc):
  """Regress a label-dependent target: the loss must fall and the output follow the label."""
  model = tiny(conditioning=conditioning, posenc=posenc, class_dropout_prob=0.0)
  make_target = _fixed_image_target if posenc == "sincos" else _per_class_affine_target
  target = make_target(np.random.default_rng(5))
  variables = init(model)
  optimizer = optax.adam(3e-3)
  opt_state = optimizer.init(variables)

  def loss_fn(variables, x, t, labels):
    out = model.apply(variables, x, t, {"label": labels}, train=True)
    return jnp.mean((out - target(x, labels)) ** 2)

  @jax.jit
  def step(variables, opt_state, key):
    kx, kt, ky = jax.random.split(key, 3)
    x = jax.random.normal(kx, (16, H, W, C))
    t = jax.random.uniform(kt, (16,))
    labels = jax.random.randint(ky, (16,), 0, CLASSES)
    loss, grads = jax.value_and_grad(loss_fn)(variables, x, t, labels)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(variables, updates), opt_state, loss

  losses = []
  for key in jax.random.split(jax.random.PRNGKey(0), 150):
    variables, opt_state, loss = step(variables, opt_state, key)
    losses.append(float(loss))
  assert np.mean(losses[-10:]) < 0.2 * np.mean(losses[:3])
  x, t, _ = inputs(B=2)
  zeros, ones = jnp.array([0, 0]), jnp.array([1, 1])
  out_0 = model.apply(variables, x, t, {"label": zeros})
  out_1 = model.apply(variables, x, t, {"label": ones})
  target_0, target_1 = target(x, zeros), target(x, ones)
  assert float(jnp.mean((out_0 - target_0) ** 2)) < 0.3 * float(jnp.mean(target_0 ** 2))
  assert float(jnp.mean((out_0 - out_1) ** 2)) > 0.5 * float(jnp.mean((target_0 - target_1) ** 2))


def _stack_blocks(params, depth):
  blocks = [params.pop(f"blocks_{i}") for i in range(depth)]
  return {**params, "blocks": jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)}


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_scan_layers_equals_unrolled(conditioning):
  model = tiny(conditioning=conditioning, depth=3)
  variables = perturbed(init(model))
  scanned = {"params": _stack_blocks(dict(variables["params"]), 3)}
  x, t, cond = inputs()
  scan_model = dataclasses.replace(model, scan_layers=True)
  # The scanned model's own parameters, from shapes only (no init compile): same tree and shapes.
  abstract = nn.unbox(jax.eval_shape(scan_model.init, jax.random.PRNGKey(0), *inputs()))
  assert jax.tree.structure(scanned) == jax.tree.structure(abstract)
  assert jax.tree.map(jnp.shape, scanned) == jax.tree.map(lambda a: a.shape, abstract)
  np.testing.assert_allclose(jax.jit(scan_model.apply)(scanned, x, t, cond),
                             jax.jit(model.apply)(variables, x, t, cond), rtol=1e-5, atol=1e-5)


def _sum_of_squares(model):
  x, t, cond = inputs()
  return lambda v: jnp.sum(model.apply(v, x, t, cond) ** 2)


@functools.cache
def _no_remat_reference(scan):
  """(model, perturbed variables, gradients without remat): the reference every remat policy
  is compared with, compiled once per process for each of scan False / True."""
  model = tiny(scan_layers=scan)
  variables = perturbed(init(model))
  return model, variables, jax.jit(jax.grad(_sum_of_squares(model)))(variables)


@pytest.mark.parametrize("policy", [p for p in REMAT_POLICIES if p != "none"])
@pytest.mark.parametrize("scan", [False, True])
def test_remat_keeps_values_and_gradients(policy, scan):
  model, variables, g_ref = _no_remat_reference(scan)
  assert model.remat_policy == "none"
  remat_model = dataclasses.replace(model, remat_policy=policy)
  g = jax.jit(jax.grad(_sum_of_squares(remat_model)))(variables)
  for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_close_to_float32():
  model = tiny(depth=3)
  variables = perturbed(init(model), scale=0.1)
  x, t, cond = inputs()
  ref = model.apply(variables, x, t, cond)
  out = dataclasses.replace(model, dtype=jnp.bfloat16).apply(variables, x, t, cond)
  assert out.dtype == jnp.float32
  assert float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref)) < 0.03


def test_output_depends_on_time_and_label():
  model = tiny()
  variables = perturbed(init(model))
  x, t, cond = inputs()
  out = model.apply(variables, x, t, cond)
  assert not np.allclose(out, model.apply(variables, x, t + 0.3, cond), atol=1e-4)
  assert not np.allclose(out, model.apply(variables, x, t, {"label": (cond["label"] + 1) % 4}),
                         atol=1e-4)


def test_label_dropout_in_training_gives_the_null_class():
  model = tiny(class_dropout_prob=1.0)
  variables = perturbed(init(model))
  x, t, cond = inputs()
  dropped = model.apply(variables, x, t, cond, train=True, rngs={"dropout": jax.random.PRNGKey(0)})
  null = model.apply(variables, x, t, {"label": jnp.full(4, CLASSES)})
  np.testing.assert_allclose(dropped, null, rtol=1e-6)


def test_learn_sigma_and_unconditional():
  model = tiny(learn_sigma=True, num_classes=0)
  x, t, _ = inputs()
  variables = model.init(jax.random.PRNGKey(0), x, t)
  assert "y_embedder" not in variables["params"]
  assert model.apply(variables, x, t).shape == (4, H, W, 2 * C)


def test_non_square_input():
  model = tiny()
  x = jnp.zeros((1, 8, 16, C))
  t, cond = jnp.zeros(1), {"label": jnp.zeros(1, jnp.int32)}
  assert model.apply(model.init(jax.random.PRNGKey(0), x, t, cond), x, t, cond).shape == x.shape


@pytest.mark.parametrize("overrides,shape,message", [
    (dict(), (1, 6, 6, C), r"input 6x6 is not divisible by patch_size=4"),
    (dict(hidden_size=30, num_heads=4), (1, 8, 8, C), r"hidden_size=30 is not divisible by num_heads=4"),
    (dict(conditioning="film"), (1, 8, 8, C), r"conditioning='film' is not one of"),
    (dict(remat_policy="some"), (1, 8, 8, C), r"remat_policy='some'"),
    (dict(attention_backend="flash"), (1, 8, 8, C), r"attention_backend='flash'"),
])
def test_bad_configs_raise_clear_errors(overrides, shape, message):
  model = tiny(patch_size=4, **overrides)
  with pytest.raises(ValueError, match=message):
    model.init(jax.random.PRNGKey(0), jnp.zeros(shape), jnp.zeros(1), {"label": jnp.zeros(1, int)})


def test_missing_label_and_bad_name():
  model = tiny()
  with pytest.raises(ValueError, match=r"cond=\{'label': labels\}"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, H, W, C)), jnp.zeros(1))
  with pytest.raises(ValueError, match="unknown DiT model name 'DiT-M/2'"):
    dit("DiT-M/2")


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_every_parameter_has_logical_axis_names(conditioning):
  model = dit("DiT-S/2", conditioning=conditioning, scan_layers=True)
  x, t, cond = example_inputs(model, (32, 32, 4))
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, cond)
  specs = nn.get_partition_spec(variables)
  shapes = jax.tree.leaves(nn.unbox(variables))
  spec_leaves = jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))
  assert len(spec_leaves) == len(shapes)
  for spec, leaf in zip(spec_leaves, shapes):
    assert isinstance(spec, jax.sharding.PartitionSpec) and len(spec) == leaf.ndim
    assert all(name is None or isinstance(name, str) for name in spec)
    assert any(name not in (None, "layers", "qkv", "modulation") for name in spec)


@pytest.mark.parametrize("posenc", ["rope_axial", "rope_mixed", "rope_scaled"])
def test_rope_dit_is_invariant_to_a_common_shift_of_positions(posenc):
  """RoPE makes attention see relative positions only: shifting every id changes nothing."""
  model = tiny(posenc=posenc, rope_reference_size=8, depth=2)
  variables = perturbed(init(model), scale=0.1)
  x, t, cond = inputs()
  ids = jnp.asarray(grid_ids(H // 2, W // 2))[None].repeat(4, 0)
  apply = jax.jit(model.apply)
  out = apply(variables, x, t, dict(cond, pos_ids=ids))
  np.testing.assert_allclose(apply(variables, x, t, cond), out, rtol=1e-5, atol=1e-6)
  shifted = ids + jnp.array([3.0, -5.0, 11.0])
  np.testing.assert_allclose(apply(variables, x, t, dict(cond, pos_ids=shifted)), out,
                             rtol=2e-4, atol=2e-5)
  swapped = ids[:, ::-1]  # tokens told they sit elsewhere: positions do matter
  assert not np.allclose(apply(variables, x, t, dict(cond, pos_ids=swapped)), out, atol=1e-3)


def test_absolute_sincos_is_not_shift_invariant():
  model = tiny(posenc="none", depth=2)
  variables = perturbed(init(model), scale=0.1)
  x, t, cond = inputs()
  rolled = jnp.roll(x, 2, axis=2)
  # Without positions attention is permutation-equivariant: a circular shift of the image
  # shifts the output (patch 2 on 8x8 -> rolling by 2 pixels moves whole tokens).
  np.testing.assert_allclose(model.apply(variables, rolled, t, cond),
                             jnp.roll(model.apply(variables, x, t, cond), 2, axis=2),
                             rtol=1e-4, atol=1e-5)
  sincos = tiny(posenc="sincos", depth=2)
  out = sincos.apply(variables, rolled, t, cond)
  assert not np.allclose(out, jnp.roll(sincos.apply(variables, x, t, cond), 2, axis=2),
                         atol=1e-3)


@pytest.mark.parametrize("posenc", POSENCS)
def test_every_posenc_params_match_the_count(posenc):
  model = dit("DiT-S/4", depth=2, posenc=posenc, rope_reference_size=8)
  assert sum(flops.dit_params(model, 4).values()) == flops.count_params(model, 32, 32, 4)


def test_bad_posenc_configs():
  with pytest.raises(ValueError, match="posenc='alibi' is not one of"):
    tiny(posenc="alibi").init(jax.random.PRNGKey(0), *inputs())
  with pytest.raises(ValueError, match="rope_reference_size > 0"):
    tiny(posenc="rope_scaled").init(jax.random.PRNGKey(0), *inputs())
