"""nn.stack.layer_stack in the text-conditioned models: scanned stacks equal the unrolled ones
(values and gradients, after stacking the per-layer parameters), and every remat policy keeps
values and gradients."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.models.mmdit import MMDiT, TextDiT

B, SIDE, S = 2, 8, 3
TINY = dict(patch_size=4, hidden_size=16, num_heads=2, text_source="embeddings",
            context_dim=8, pooled_dim=4, text_length=S)
# name -> (model, {stack name: layers in the scanned stack})
VARIANTS = {
    # SD3 layout: the last block's text stream is keys/values only, so it is not scanned.
    "double_sd3": (MMDiT(depth_double=3, **TINY), {"double": 2}),
    "double": (MMDiT(depth_double=2, reduce_last_text=False, **TINY), {"double": 2}),
    "single_sequential": (MMDiT(depth_double=0, depth_single=2, single_block="sequential",
                                **TINY), {"single": 2}),
    "single_parallel": (MMDiT(depth_double=0, depth_single=2, single_block="parallel", **TINY),
                        {"single": 2}),
    "hybrid": (MMDiT(depth_double=2, depth_single=2, **TINY), {"double": 2, "single": 2}),
    "text_dit_pooled": (TextDiT(depth=2, text_conditioning="pooled_adaln", **TINY),
                        {"blocks": 2}),
    "text_dit_cross": (TextDiT(depth=2, text_conditioning="cross_attn", **TINY), {"blocks": 2}),
}


def inputs(seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(B, SIDE, SIDE, 3)), jnp.float32)
  mask = jnp.asarray([[True, True, False], [True, True, True]])
  cond = {"text": jnp.asarray(rng.normal(size=(B, S, 8)), jnp.float32), "text_mask": mask,
          "pooled": jnp.asarray(rng.normal(size=(B, 4)), jnp.float32)}
  return x, jnp.asarray([0.3, 0.8]), cond


def perturbed_params(model):
  """Unboxed parameters moved off their (partly zero) init, so every path carries signal."""
  x, t, cond = inputs()
  params = jax.jit(lambda r: model.init(r, x, t, cond))(jax.random.PRNGKey(0))["params"]
  params = jax.tree.map(lambda p: getattr(p, "value", p), params,
                        is_leaf=lambda p: hasattr(p, "value"))
  rng = np.random.default_rng(1)
  return jax.tree.map(lambda p: p + 0.1 * rng.normal(size=p.shape).astype(np.float32), params)


def to_scanned(params, stacks):
  """Per-layer `{name}_{i}` trees -> one `{name}` tree with a leading layer axis."""
  params = dict(params)
  for name, n in stacks.items():
    layers = [params.pop(f"{name}_{i}") for i in range(n)]
    params[name] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
  return params


def value_and_grad(model, params):
  x, t, cond = inputs()
  loss = lambda p: jnp.sum(jnp.sin(model.apply({"params": p}, x, t, cond)))
  return jax.jit(jax.value_and_grad(loss))(params)


def assert_trees_close(a, b, tol):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=tol, atol=tol)


@functools.cache
def variant_params(name):
  """The perturbed per-layer parameters of a variant, shared by the tests of this module."""
  return perturbed_params(VARIANTS[name][0])


@functools.cache
def loss_and_grads(name, scan, policy="none"):
  """value_and_grad of a variant (scanned or unrolled, under a remat policy) at its perturbed
  parameters, stacked when scanned. Cached: several tests compare against the same one, and
  each is compiled once per process instead of once per test."""
  model, stacks = VARIANTS[name]
  params = variant_params(name)
  if scan:
    params = to_scanned(params, stacks)
  return value_and_grad(dataclasses.replace(model, scan_layers=scan, remat_policy=policy),
                        params)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_scanned_equals_unrolled_values_and_gradients(name):
  model, stacks = VARIANTS[name]
  assert model.scan_layers is False and model.remat_policy == "none"
  params = variant_params(name)
  scan_model = dataclasses.replace(model, scan_layers=True)
  scanned = to_scanned(params, stacks)
  x, t, cond = inputs()
  init_scanned = jax.eval_shape(lambda r: scan_model.init(r, x, t, cond), jax.random.PRNGKey(0))
  shapes = lambda tree: jax.tree.map(lambda p: p.shape, tree)
  assert shapes(scanned) == shapes(jax.tree.map(lambda p: getattr(p, "value", p),
                                                init_scanned["params"],
                                                is_leaf=lambda p: hasattr(p, "value")))
  loss, grads = loss_and_grads(name, False)
  scan_loss, scan_grads = loss_and_grads(name, True)
  np.testing.assert_allclose(scan_loss, loss, rtol=1e-5)
  for stack, n in stacks.items():  # every layer reaches the loss: the comparison has teeth
    assert all(max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads[f"{stack}_{i}"])) > 0
               for i in range(n))
  assert_trees_close(scan_grads, to_scanned(grads, stacks), 1e-5)


# Every block class scanned with full remat; the other policies (and unrolled remat) on the
# hybrid (double + single blocks) and the cross-attention text DiT. Scanned, "none" already
# means the "dots" policy (nn.stack.SCAN_NONE_POLICY), so the reference differs from each.
REMAT_CASES = ([(name, True, "full") for name in sorted(VARIANTS)]
               + [(name, scan, policy) for name in ("hybrid", "text_dit_cross")
                  for scan, policy in ((False, "full"), (False, "dots"),
                                       (True, "save_block_outputs"))])


@pytest.mark.parametrize("name, scan, policy", REMAT_CASES)
def test_remat_keeps_values_and_gradients(name, scan, policy):
  loss, grads = loss_and_grads(name, scan)  # the same stack without remat
  remat_loss, remat_grads = loss_and_grads(name, scan, policy)
  np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
  assert_trees_close(remat_grads, grads, 1e-6)


def test_unknown_remat_policy_names_the_field():
  model, _ = VARIANTS["hybrid"]
  x, t, cond = inputs()
  with pytest.raises(ValueError, match="remat_policy='some'"):
    dataclasses.replace(model, remat_policy="some").init(jax.random.PRNGKey(0), x, t, cond)
