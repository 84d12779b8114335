"""Analytic FLOP and parameter counts for DiT, with XLA's cost analysis as a cross-check.

Convention (the DiT paper's): forward pass of one example, one multiply-add counts as ONE flop;
only matrix products are counted (linear layers, attention scores q k^T and the weighted sum
of values). Norms, activations, softmax and additions are left out: they are O(T D) per layer,
a fraction of a percent of the total for the paper's models.

XLA's `cost_analysis()["flops"]` counts a multiply-add as TWO flops and also counts every
elementwise operation, so `xla_flops / 2` is slightly above the analytic number (0.3% for
DiT-XL/2, about 1% for the smallest models).

Symbols: T image tokens, S condition tokens (t and y), D width, F MLP width, P = p*p*C patch
features, L depth.
"""
import dataclasses

import jax
import jax.numpy as jnp

from dit_jax.models.dit import DiT

COMPONENTS = ("embed", "attention", "mlp", "adaln", "norm", "final")

# Forward Gflops at 256x256 (32x32x4 latents) from Table 4 of the DiT paper, and parameters
# (millions) from its Table 1; the lecture's patch-4 column rounds these to one decimal.
PAPER_GFLOPS_256 = {
    "DiT-S/8": 0.36, "DiT-S/4": 1.41, "DiT-S/2": 6.06,
    "DiT-B/8": 1.42, "DiT-B/4": 5.56, "DiT-B/2": 23.01,
    "DiT-L/8": 5.01, "DiT-L/4": 19.70, "DiT-L/2": 80.71,
    "DiT-XL/8": 7.39, "DiT-XL/4": 29.05, "DiT-XL/2": 118.64,
}
PAPER_PARAMS_M = {"S": 33, "B": 130, "L": 458, "XL": 675}
FREQUENCY_DIM = 256  # sinusoidal features of the timestep embedder


def _tokens(model: DiT, height: int, width: int) -> int:
  model.check_config(height, width)
  return (height // model.patch_size) * (width // model.patch_size)


def _cond_tokens(model: DiT) -> int:
  return 2 if model.num_classes else 1


def _out_channels(model: DiT, channels: int) -> int:
  return 2 * channels if model.learn_sigma else channels


def _adaln_chunks(model: DiT) -> tuple[int, int]:
  """Modulation outputs per block and in the final layer (in units of D)."""
  return {"adaln_zero": (6, 2), "adaln": (4, 2)}.get(model.conditioning, (0, 0))


def dit_flops(model: DiT, height: int, width: int, channels: int) -> dict[str, int]:
  """Forward multiply-adds per component for one (height, width, channels) input."""
  D, L, p = model.hidden_size, model.depth, model.patch_size
  F = int(D * model.mlp_ratio)
  T = _tokens(model, height, width)
  S = _cond_tokens(model)
  P = p * p * channels
  T_blocks = T + S if model.conditioning == "in_context" else T
  attention = 4 * T_blocks * D * D + 2 * T_blocks * T_blocks * D  # qkv + out; scores + values
  if model.conditioning == "cross_attn":
    attention += 2 * T * D * D + 2 * S * D * D + 2 * T * S * D   # q + out, k/v, scores + values
  per_block, final = _adaln_chunks(model)
  return {
      "embed": T * P * D + FREQUENCY_DIM * D + D * D,
      "attention": L * attention,
      "mlp": L * 2 * T_blocks * D * F,
      "adaln": (L * per_block + final) * D * D,
      "norm": 0,
      "final": T * D * p * p * _out_channels(model, channels),
  }


def dit_params(model: DiT, channels: int) -> dict[str, int]:
  """Trainable parameters per component (the fixed sin-cos table is not a parameter)."""
  D, L, p = model.hidden_size, model.depth, model.patch_size
  F = int(D * model.mlp_ratio)
  P = p * p * channels
  labels = (model.num_classes + 1) * D if model.num_classes else 0
  attention = 4 * D * D + 4 * D
  norms = 0
  if model.conditioning == "cross_attn":
    attention += 4 * D * D + 4 * D
    norms = L * 3 * 2 * D + 2 * D
  elif model.conditioning == "in_context":
    norms = L * 2 * 2 * D + 2 * D
  per_block, final = _adaln_chunks(model)
  out = p * p * _out_channels(model, channels)
  if model.posenc == "rope_mixed":  # learned (row, col) frequency per head and pair
    attention += D
  return {
      "embed": P * D + D + FREQUENCY_DIM * D + D + D * D + D + labels,
      "attention": L * attention,
      "mlp": L * (2 * D * F + F + D),
      "adaln": L * per_block * (D * D + D) + final * (D * D + D),
      "norm": norms,
      "final": D * out + out,
  }


def abstract_inputs(model: DiT, height: int, width: int, channels: int, batch: int = 1):
  """ShapeDtypeStructs (x, t, cond) for tracing a forward pass without memory."""
  x = jax.ShapeDtypeStruct((batch, height, width, channels), jnp.float32)
  t = jax.ShapeDtypeStruct((batch,), jnp.float32)
  cond = {"label": jax.ShapeDtypeStruct((batch,), jnp.int32)} if model.num_classes else None
  return x, t, cond


def count_params(model: DiT, height: int, width: int, channels: int) -> int:
  """Parameters of the real module, from jax.eval_shape (no memory is allocated)."""
  x, t, cond = abstract_inputs(model, height, width, channels)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, cond)
  return sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))


def xla_flops(model: DiT, height: int, width: int, channels: int) -> float:
  """XLA's flop count of the compiled forward of one example (multiply-add = 2 flops).

  Layers are unrolled here because XLA's cost analysis counts a scanned body only once.
  """
  model = dataclasses.replace(model, scan_layers=False, remat_policy="none")
  x, t, cond = abstract_inputs(model, height, width, channels)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, cond)
  compiled = jax.jit(model.apply).lower(variables, x, t, cond).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax returns one dict per computation
    cost = cost[0]
  return float(cost["flops"])


def dit_report(model: DiT, name: str, height: int, width: int, channels: int,
               with_xla: bool = False) -> dict:
  """One row of `dit-jax flops`: Gflops and parameters in total and per component."""
  flops = dit_flops(model, height, width, channels)
  params = dit_params(model, channels)
  row = {
      "model": name,
      "patch_size": model.patch_size,
      "conditioning": model.conditioning,
      "input": [height, width, channels],
      "tokens": _tokens(model, height, width),
      "gflops": sum(flops.values()) / 1e9,
      "params": sum(params.values()),
      "gflops_by_component": {k: v / 1e9 for k, v in flops.items()},
      "params_by_component": params,
  }
  if with_xla:
    row["xla_gflops"] = xla_flops(model, height, width, channels) / 2 / 1e9
  return row
