"""What test_aot.py (TPU slices) and test_aot_gpu.py (GPU hosts) share: a small DiT config, the
per-device bytes of its train state counted from shapes and PartitionSpecs, and the CLI runner.
Imports nothing of libtpu or the CUDA plugin: each test module skips without its own."""
import math

import jax
import numpy as np
import pytest

from dit_jax import cli, engine, parallel
from dit_jax.config import base_config, model_section, validate
from dit_jax.models import create_model
from dit_jax.training import denoiser

BASE = ["aot", "--config", "configs/dit.py:DiT-S/8", "--config.model.depth=2",
        "--config.model.hidden_size=64", "--config.model.num_heads=4"]
LATENTS = (16, 16, 4)


def small_config(rules: str, batch: int, mesh: dict, **model):
  config = base_config()
  fields = dict(patch_size=2, hidden_size=64, depth=2, num_heads=4, num_classes=10,
                dtype="bfloat16")
  config.model = model_section("DiT", **{**fields, **model})
  # 16x16x4 latents: enough activations that splitting the batch saves memory
  config.data.update(image_size=128, latent_downsample=8, latent_channels=4, batch_size=batch)
  config.mesh.update(rules=rules, **mesh)
  config.sample.update(steps=4)
  return validate(config)


def state_bytes(config, target) -> int:
  """Bytes of the train state on one device, from shapes and the plan's PartitionSpecs."""
  plan = parallel.ShardingPlan.create(config.mesh, devices=target.devices)
  s = engine.prepare(denoiser.denoiser_task(create_model(config.model), None, LATENTS), config, plan)
  sizes = dict(plan.mesh.shape)
  total = 0
  for leaf, sharding in zip(jax.tree.leaves(s.abstract), jax.tree.leaves(
      s.shardings, is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding))):
    block = parallel.shard_shape(leaf.shape, sharding.spec, sizes)
    total += math.prod(block) * np.dtype(leaf.dtype).itemsize
  return total


def run_cli(argv, capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(argv)
  return exit_info.value.code, capsys.readouterr()
