"""Train-step throughput: `dit-jax bench` times the real jitted, sharded train step.

The step is exactly the one `dit-jax train` runs (loss, gradients, AdamW, EMA) on random data
already on the devices, so the figure isolates the model and its sharding from input loading.
Any model of the contract can be timed (a DiT preset, or the model of a config). Achieved
TFLOP/s counts 3 forward passes per image (forward + backward) with a multiply-add as 2 flops,
from the model's analytic count (`model.forward_flops`).
"""
import dataclasses
import time

import jax
import numpy as np

from dit_jax import flow, parallel, train
from dit_jax.config import base_config
from dit_jax.models.contract import example_condition


@dataclasses.dataclass
class BenchResult:
  images_per_s: float
  step_ms: float
  compile_s: float
  train_tflops_per_s: float  # per device
  memory_gib: float | None   # per device: arguments + outputs + temporaries of the step

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def bench_train_step(model, image_shape, batch_size: int, *, steps: int = 10,
                     mesh_config=None, seed: int = 0, config=None) -> BenchResult:
  """Compiles the train step for `model` on `batch_size` images of `image_shape` under
  `mesh_config` (default: data parallel over all devices) and times `steps` steps; the
  optimizer and objective are those of `config` (default: the base config)."""
  config = base_config() if config is None else config
  optimizer, schedule = train.make_optimizer(config.optim, 1000)
  objective = flow.make_objective(config.objective)
  plan = parallel.ShardingPlan.create(mesh_config)
  plan.check_batch(batch_size)
  ema = train.EMA(0.9999)
  _, shardings = train.state_shardings(model, optimizer, image_shape, plan, ema)
  state = train.init_train_state(model, optimizer, jax.random.PRNGKey(seed), image_shape, plan,
                                 ema)
  rng = np.random.default_rng(seed)
  local = {"image": rng.standard_normal((batch_size, *image_shape)).astype(np.float32)}
  # The condition's values do not change the step's cost: the contract's placeholders.
  local.update({k: np.asarray(v) for k, v in (example_condition(model, batch_size) or {}).items()})
  batch = plan.global_batch(local)
  step_fn = train.make_step_fn(model, objective, schedule, plan, shardings)

  start = time.perf_counter()
  compiled = step_fn.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  state, metrics = step_fn(state, batch)  # runs the executable compiled above (cached)
  jax.block_until_ready(metrics)
  state, metrics = step_fn(state, batch)  # one more warm step
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step_fn(state, batch)
  jax.block_until_ready((state, metrics))
  seconds = (time.perf_counter() - start) / steps
  if not np.isfinite(float(metrics["loss"])):
    raise FloatingPointError(f"non-finite loss {float(metrics['loss'])} while benchmarking")

  macs = sum(model.forward_flops(*image_shape).values())
  devices = plan.mesh.devices.size
  tflops = 3 * 2 * macs * batch_size / seconds / devices / 1e12
  footprint = None
  if memory is not None:  # donated state aliases its outputs: count it once
    footprint = (memory.argument_size_in_bytes + memory.output_size_in_bytes
                 + memory.temp_size_in_bytes - memory.alias_size_in_bytes) / 2**30
  return BenchResult(images_per_s=batch_size / seconds, step_ms=1000 * seconds,
                     compile_s=compile_s, train_tflops_per_s=tflops, memory_gib=footprint)

