"""Analytic FLOP and parameter counts of any model (through the model contract's
`forward_flops`), with XLA's cost analysis as a cross-check, and the DiT paper's numbers.

Convention (the DiT paper's): forward pass of one example, one multiply-add counts as ONE flop;
only matrix products are counted (linear layers, attention scores q k^T and the weighted sum
of values). Norms, activations, softmax and additions are left out: they are O(T D) per layer,
a fraction of a percent of the total for the paper's models. The per-family formulas are in
`dit_jax.models.flop_counts`.

XLA's `cost_analysis()["flops"]` counts a multiply-add as TWO flops and also counts every
elementwise operation, so `xla_flops / 2` is slightly above the analytic number (0.3% for
DiT-XL/2, about 1% for the smallest models).
"""
import dataclasses

import jax

from dit_jax.models.contract import example_inputs
from dit_jax.models.flop_counts import (COMPONENTS, FREQUENCY_DIM, UNET_COMPONENTS, dit_flops,
                                        dit_params)  # re-exported: the DiT tables

# Forward Gflops at 256x256 (32x32x4 latents) from Table 4 of the DiT paper, and parameters
# (millions) from its Table 1; the lecture's patch-4 column rounds these to one decimal.
PAPER_GFLOPS_256 = {
    "DiT-S/8": 0.36, "DiT-S/4": 1.41, "DiT-S/2": 6.06,
    "DiT-B/8": 1.42, "DiT-B/4": 5.56, "DiT-B/2": 23.01,
    "DiT-L/8": 5.01, "DiT-L/4": 19.70, "DiT-L/2": 80.71,
    "DiT-XL/8": 7.39, "DiT-XL/4": 29.05, "DiT-XL/2": 118.64,
}
PAPER_PARAMS_M = {"S": 33, "B": 130, "L": 458, "XL": 675}


def count_params(model, height: int, width: int, channels: int) -> int:
  """Parameters of the real module, from jax.eval_shape (no memory is allocated)."""
  x, t, cond = example_inputs(model, (height, width, channels))
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, cond)
  return sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))


def compiled_forward_flops(model, x, t, cond) -> float:
  """XLA's flop count of `model.apply` compiled for abstract inputs (multiply-add = 2 flops)."""
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, cond)
  cost = jax.jit(model.apply).lower(variables, x, t, cond).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax returns one dict per computation
    cost = cost[0]
  return float(cost["flops"])


def xla_flops(model, height: int, width: int, channels: int) -> float:
  """XLA's flop count of the compiled forward of one example (multiply-add = 2 flops).

  Layers are unrolled here because XLA's cost analysis counts a scanned body only once.
  """
  fields = {f.name for f in dataclasses.fields(model)}
  unrolled = {k: v for k, v in (("scan_layers", False), ("remat_policy", "none")) if k in fields}
  model = dataclasses.replace(model, **unrolled)
  return compiled_forward_flops(model, *example_inputs(model, (height, width, channels)))
