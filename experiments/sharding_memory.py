"""Per-device memory of the DiT-XL/2 train state under each sharding preset, and the
communication each preset needs per step, computed from the shardings (shapes only).

    python experiments/sharding_memory.py   # writes experiments/results/sharding_memory.md

The state is what `engine.init_state` creates: float32 parameters, EMA parameters and
AdamW's two moments (activations come on top and depend on batch and remat). The shard of
every array follows `parallel.shard_shape` of its partition spec, exactly as the train step
lays it out; the mesh per device count is the one listed in the table.
"""
import math
from pathlib import Path

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec

from dit_jax import engine, parallel
from dit_jax.config import base_config
from dit_jax.models.dit import dit
from dit_jax.training import denoiser

RESULTS = Path(__file__).parent / "results"
DEVICE_COUNTS = (1, 8, 64, 256)
LATENT_SHAPE = (32, 32, 4)  # 256x256 images through the SD VAE


def mesh_for(preset: str, devices: int) -> dict[str, int]:
  """A sensible (data, fsdp, tensor) for `devices`: FSDP up to 128 ways (1152 = 2^7 * 9 does
  not split 256 ways), tensor parallelism 4 ways inside a node."""
  if preset == "dp":
    return dict(data=devices, fsdp=1, tensor=1)
  tensor = min(4, devices) if preset == "fsdp_tp" else 1
  fsdp = min(devices // tensor, 128)
  return dict(data=devices // (tensor * fsdp), fsdp=fsdp, tensor=tensor)


def state_bytes_per_device(abstract_state, logical_specs, rules, axis_sizes) -> int:
  specs = nn.logical_to_mesh(logical_specs, rules)
  state_specs = abstract_state.replace(
      step=PartitionSpec(), params=specs, ema_params=specs, rng=PartitionSpec(),
      opt_state=parallel.follow_params(abstract_state.opt_state, abstract_state.params, specs,
                                       PartitionSpec()))
  leaves = jax.tree.leaves(abstract_state)
  spec_leaves = jax.tree.leaves(state_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
  total = 0
  for leaf, spec in zip(leaves, spec_leaves):
    for dim, entry in enumerate(spec):
      parts = math.prod(axis_sizes[a] for a in parallel._spec_axes(entry))
      assert leaf.shape[dim] % parts == 0, (leaf.shape, spec, axis_sizes)
    total += math.prod(parallel.shard_shape(leaf.shape, spec, axis_sizes)) * leaf.dtype.itemsize
  return total


def communication_gb(preset: str, mesh: dict, params: int, tokens: int, width: int,
                     depth: int, local_batch: int) -> float:
  """Bytes each device sends per step with ring collectives (n-1)/n of the data per pass.

  dp: all-reduce of float32 gradients (2 passes). fsdp: all-gather of the float32 weights
  (param_dtype) in the forward and again in the backward (remat or XLA rematerialisation),
  reduce-scatter of float32 gradients. tensor: per block two all-reduces of bf16 activations
  forward and two backward (Megatron)."""
  out = 0.0
  n_dp = mesh["data"] * mesh["fsdp"]
  if preset == "dp" and n_dp > 1:
    out += 2 * (n_dp - 1) / n_dp * params * 4
  if preset != "dp":
    n = mesh["fsdp"]
    shard = params / mesh["tensor"]
    if n > 1:
      out += (n - 1) / n * shard * (4 + 4 + 4)
    if mesh["data"] > 1:  # gradient all-reduce of the shards across data replicas
      out += 2 * (mesh["data"] - 1) / mesh["data"] * shard / n * 4
  t = mesh["tensor"]
  if t > 1:
    out += depth * 4 * 2 * (t - 1) / t * local_batch * tokens * width * 2
  return out / 1e9


def main():
  model = dit("DiT-XL/2", num_classes=1000)
  optimizer, _ = engine.make_optimizer(base_config().optim, 1000)
  abstract = jax.eval_shape(
      lambda key: engine.create_state(denoiser.denoiser_task(model, None, LATENT_SHAPE), optimizer, key),
      jax.random.PRNGKey(0))
  logical = engine.logical_param_specs(denoiser.denoiser_task(model, None, LATENT_SHAPE))
  params = sum(x.size for x in jax.tree.leaves(abstract.params))
  tokens = (LATENT_SHAPE[0] // model.patch_size) ** 2
  rows = []
  for preset in parallel.RULE_PRESETS:
    for devices in DEVICE_COUNTS:
      mesh = mesh_for(preset, devices)
      gib = state_bytes_per_device(abstract, logical, parallel.RULE_PRESETS[preset], mesh) / 2**30
      local_batch = 256 // (mesh["data"] * mesh["fsdp"]) if devices <= 256 else 1
      comm = communication_gb(preset, mesh, params, tokens, model.hidden_size, model.depth,
                              max(local_batch, 1))
      rows.append((preset, devices, f"({mesh['data']}, {mesh['fsdp']}, {mesh['tensor']})",
                   gib, comm))
  header = ("| preset | devices | mesh (data, fsdp, tensor) | state per device (GiB) | "
            "sent per device per step (GB, batch 256) |")
  lines = [header, "|---|---|---|---|---|"]
  lines += [f"| {p} | {n} | {m} | {g:.2f} | {c:.2f} |" for p, n, m, g, c in rows]
  text = (f"DiT-XL/2, {params:,} parameters; state = float32 params + EMA + AdamW mu, nu "
          f"({16 * params / 2**30:.2f} GiB unsharded).\n\n" + "\n".join(lines) + "\n")
  RESULTS.mkdir(exist_ok=True)
  (RESULTS / "sharding_memory.md").write_text(text)
  print(text)


if __name__ == "__main__":
  main()
