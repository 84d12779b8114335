"""Sharded training equals single-device training; parameters are sharded as the rules say."""
import functools
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from dit_jax import engine, flow, parallel
from dit_jax.config import base_config
from dit_jax.engine import checkpoint
from dit_jax.models.dit import DiT, dit
from dit_jax.training import denoiser

GOLDEN = Path(__file__).parent / "golden" / "dit_xl2_fsdp_tp_specs.json"
IMAGE_SHAPE = (8, 8, 3)
MESHES = [  # (data, fsdp, tensor), rules
    ((8, 1, 1), "dp"), ((2, 4, 1), "fsdp"), ((2, 2, 2), "fsdp_tp"), ((1, 8, 1), "fsdp")]


def small_model(**kw):
  return DiT(**dict(dict(patch_size=2, hidden_size=64, depth=2, num_heads=4, num_classes=10,
                         learn_sigma=True), **kw))


def setup(model=None):
  config = base_config()
  model = model or small_model()
  optimizer, schedule = engine.make_optimizer(config.optim, 100)
  objective = flow.make_objective(config.objective)
  return model, optimizer, schedule, objective


@functools.cache
def default_setup():
  """setup() shared by the tests below, so states made with its optimizer (a static field of
  TrainState) fit the shared step functions of step_fn_for."""
  return setup()


@functools.cache
def step_fn_for(sizes, rules):
  """(plan, state shardings, step function) of the default model on an 8-device mesh: the same
  computation is run by one test and compiled for its collectives by another; compiled once
  per process."""
  model, optimizer, schedule, objective = default_setup()
  plan = plan_for(sizes, rules)
  _, shardings = engine.state_shardings(denoiser.denoiser_task(model, None, IMAGE_SHAPE), optimizer, plan)
  return plan, shardings, engine.make_step_fn(denoiser.denoiser_task(model, objective, None), schedule, plan, shardings)


def batches(count, size=16, seed=0):
  rng = np.random.default_rng(seed)
  return [{"image": rng.standard_normal((size, *IMAGE_SHAPE)).astype(np.float32),
           "label": rng.integers(0, 10, size).astype(np.int32)} for _ in range(count)]


def plan_for(sizes, rules, devices=None):
  data, fsdp, tensor = sizes
  return parallel.ShardingPlan.create(dict(data=data, fsdp=fsdp, tensor=tensor, rules=rules),
                                      devices)


def run_steps(model, optimizer, schedule, objective, plan, data, state=None, step_fn=None):
  if state is None:
    state = engine.init_state(denoiser.denoiser_task(model, None, IMAGE_SHAPE), optimizer, jax.random.PRNGKey(0), plan)
  if step_fn is None:
    _, shardings = engine.state_shardings(denoiser.denoiser_task(model, None, IMAGE_SHAPE), optimizer, plan)
    step_fn = engine.make_step_fn(denoiser.denoiser_task(model, objective, None), schedule, plan, shardings)
  losses = []
  for batch in data:
    state, metrics = step_fn(state, plan.global_batch(batch))
    losses.append(float(metrics["loss"]))
  return state, losses, step_fn


def assert_trees_close(a, b, rtol=2e-5, atol=2e-6):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol,
                                                       atol=atol), a, b)


@pytest.fixture(scope="module")
def reference():
  """Two single-device steps (no mesh at all): the numbers every mesh must reproduce."""
  model, optimizer, schedule, objective = setup()
  state = engine.create_state(denoiser.denoiser_task(model, None, IMAGE_SHAPE), optimizer, jax.random.PRNGKey(0))
  step_fn = engine.make_step_fn(denoiser.denoiser_task(model, objective, None), schedule)
  losses = []
  for batch in batches(2):
    state, metrics = step_fn(state, jax.tree.map(jnp.asarray, batch))
    losses.append(float(metrics["loss"]))
  return jax.device_get(state), losses


@pytest.mark.parametrize("sizes,rules", MESHES[:3])
def test_sharded_steps_equal_single_device(reference, sizes, rules):
  ref_state, ref_losses = reference
  model, optimizer, schedule, objective = default_setup()
  plan, _, step_fn = step_fn_for(sizes, rules)
  state, losses, step_fn = run_steps(model, optimizer, schedule, objective, plan, batches(2),
                                     step_fn=step_fn)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  assert_trees_close(state.params, ref_state.params)
  assert_trees_close(state.ema_params, ref_state.ema_params)
  assert_trees_close(state.opt_state, ref_state.opt_state)
  assert int(state.step) == 2 and step_fn._cache_size() == 1


def test_state_is_sharded_as_the_rules_say():
  model, optimizer, *_ = setup()
  plan = plan_for((2, 2, 2), "fsdp_tp")
  state = engine.init_state(denoiser.denoiser_task(model, None, IMAGE_SHAPE), optimizer, jax.random.PRNGKey(0), plan)
  qkv = state.params["blocks_0"]["attn"]["qkv"]["kernel"]  # (D, 3, N, H)
  assert qkv.sharding.spec == PartitionSpec("fsdp", None, "tensor", None)
  assert qkv.addressable_shards[0].data.shape == (32, 3, 2, 16)
  fc1 = state.params["blocks_0"]["mlp"]["fc1"]["kernel"]  # (D, F)
  assert fc1.sharding.spec == PartitionSpec("fsdp", "tensor")
  adam = state.opt_state[1][0]  # clip, then masked adamw's ScaleByAdamState
  for moments in (adam.mu, adam.nu):
    jax.tree.map(lambda m, p: (m.sharding.spec, p.sharding.spec), moments, state.params)
    assert jax.tree.all(jax.tree.map(lambda m, p: m.sharding == p.sharding, moments,
                                     state.params))
  assert jax.tree.all(jax.tree.map(lambda e, p: e.sharding == p.sharding, state.ema_params,
                                   state.params))
  assert state.step.sharding.is_fully_replicated


def spec_table(plan, model, image_shape):
  """{parameter path: mesh axes per dimension} for the golden file."""
  optimizer, _ = engine.make_optimizer(base_config().optim, 10)
  _, shardings = engine.state_shardings(denoiser.denoiser_task(model, None, image_shape), optimizer, plan)
  flat = jax.tree_util.tree_flatten_with_path(shardings.params)[0]
  return {parallel._path_str(path): [list(e) if isinstance(e, tuple) else e
                                     for e in s.spec] for path, s in flat}


def test_dit_xl2_partition_specs_match_the_golden_file():
  """DiT-XL/2 under FSDP + tensor parallelism, from shapes only (no parameter memory).
  Regenerate after an intended change with DIT_JAX_UPDATE_GOLDEN=1."""
  table = spec_table(plan_for((2, 2, 2), "fsdp_tp"), dit("DiT-XL/2", num_classes=1000),
                     (32, 32, 4))
  if os.environ.get("DIT_JAX_UPDATE_GOLDEN"):
    GOLDEN.parent.mkdir(exist_ok=True)
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(table.items())]
    GOLDEN.write_text("{\n" + ",\n".join(lines) + "\n}\n")  # one parameter per line
  golden = json.loads(GOLDEN.read_text())
  assert table == golden
  assert len(golden) == 28 * 10 + 11  # 10 arrays per block; embedders and final layer
  assert golden["blocks_27/attn/qkv/kernel"] == ["fsdp", None, "tensor", None]
  assert golden["blocks_27/attn/out/kernel"] == ["tensor", None, "fsdp"]
  assert golden["blocks_0/mlp/fc2/kernel"] == ["tensor", "fsdp"]
  assert golden["y_embedder/embedding"] == [None, "fsdp"]


def test_reshard_on_restore_and_continue_equals_uninterrupted(tmp_path):
  """Save after 2 steps on 8 devices (FSDP), restore on 4 devices (data parallel), train 2
  more: the same parameters as 4 steps on one device."""
  model, optimizer, schedule, objective = default_setup()
  data = batches(4, seed=1)
  single = parallel.ShardingPlan.create(dict(data=1), jax.devices()[:1])
  straight, straight_losses, _ = run_steps(model, optimizer, schedule, objective, single, data)

  fsdp, _, fsdp_step = step_fn_for((1, 8, 1), "fsdp")
  state, losses, _ = run_steps(model, optimizer, schedule, objective, fsdp, data[:2],
                               step_fn=fsdp_step)
  ckpt = checkpoint.Checkpointer(tmp_path, async_save=False)
  ckpt.save(2, state)
  four = plan_for((4, 1, 1), "dp", jax.devices()[:4])
  abstract, shardings = engine.state_shardings(denoiser.denoiser_task(model, None, IMAGE_SHAPE), optimizer, four)
  restored, _ = ckpt.restore(engine.with_shardings(abstract, shardings))
  ckpt.close()
  kernel = restored.params["blocks_0"]["mlp"]["fc1"]["kernel"]
  assert len(kernel.sharding.device_set) == 4 and kernel.sharding.is_fully_replicated
  resumed, more_losses, _ = run_steps(model, optimizer, schedule, objective, four, data[2:],
                                      restored)
  np.testing.assert_allclose(losses + more_losses, straight_losses, rtol=1e-5)
  assert_trees_close(resumed.params, straight.params)
  assert_trees_close(resumed.opt_state, straight.opt_state)


def collectives(sizes, rules):
  model, optimizer, _, _ = default_setup()
  plan, shardings, step_fn = step_fn_for(sizes, rules)
  abstract = jax.eval_shape(
      lambda: engine.init_state(denoiser.denoiser_task(model, None, IMAGE_SHAPE), optimizer, jax.random.PRNGKey(0), plan))
  batch = plan.global_batch(batches(1)[0])
  hlo = step_fn.lower(engine.with_shardings(abstract, shardings), batch).compile().as_text()
  return {op: hlo.count(f" {op}(") + hlo.count(f" {op}-start(")
          for op in ("all-gather", "all-reduce", "reduce-scatter")}


def test_compiled_steps_have_the_expected_collectives():
  dp = collectives((8, 1, 1), "dp")
  assert dp["all-reduce"] > 0 and dp["all-gather"] == 0  # gradients summed, weights replicated
  fsdp = collectives((1, 8, 1), "fsdp")
  assert fsdp["all-gather"] > 0  # weights gathered just in time
  # Gradients are reduce-scattered (XLA:CPU lowers that to all-reduce + slice).
  assert fsdp["reduce-scatter"] + fsdp["all-reduce"] > 0


def test_bad_mesh_and_batch_sizes_name_the_fields():
  with pytest.raises(ValueError, match="data.batch_size=12 must be divisible by mesh.data=8"):
    plan_for((8, 1, 1), "dp").check_batch(12)
  with pytest.raises(ValueError, match=r"mesh.data, mesh.fsdp, mesh.tensor = \(3, -1, 1\)"):
    plan_for((3, -1, 1), "fsdp")
  with pytest.raises(ValueError, match="mesh.tensor=2 but mesh.rules='fsdp'"):
    plan_for((1, 4, 2), "fsdp")
  with pytest.raises(ValueError, match="mesh.rules='zero'"):
    plan_for((8, 1, 1), "zero")
  model, optimizer, *_ = setup(small_model(hidden_size=48, num_heads=3))
  with pytest.raises(ValueError, match="Change model.num_heads or mesh.tensor"):
    engine.state_shardings(denoiser.denoiser_task(model, None, IMAGE_SHAPE), optimizer, plan_for((1, 4, 2), "fsdp_tp"))


def test_mesh_sizes_resolve_and_neighbours_share_an_axis():
  plan = plan_for((2, -1, 2), "fsdp_tp")
  assert dict(plan.mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert sorted(d.id for d in plan.mesh.devices.flat) == list(range(8))
  assert plan.batch_divisor == 4
  custom = parallel.resolve_rules([("embed", "fsdp"), ("mlp", ("tensor",)), ("heads", None)])
  assert custom == (("embed", "fsdp"), ("mlp", ("tensor",)), ("heads", None))
  with pytest.raises(ValueError, match="names mesh axes \\['model'\\]"):
    parallel.resolve_rules([("embed", "model")])


def test_shard_shape_and_per_device_bytes():
  spec = PartitionSpec("fsdp", None, "tensor", None)
  assert parallel.shard_shape((1152, 3, 16, 72), spec, {"fsdp": 8, "tensor": 4}) == (
      144, 3, 4, 72)
  assert parallel.shard_shape((10,), PartitionSpec(("data", "fsdp")), {"data": 2, "fsdp": 2}) \
      == (3,)


class FakeDevice:
  """Enough of a device for the mesh utilities: two slices of four."""

  def __init__(self, index):
    self.id, self.slice_index, self.process_index = index, index // 4, index // 4
    self.platform, self.device_kind = "cpu", "cpu"

  def __repr__(self):
    return f"D{self.id}"


def test_multi_slice_grid_puts_slices_along_the_dcn_axis():
  devices = [FakeDevice(i) for i in range(8)]
  grid = parallel.device_grid(dict(data=1, fsdp=4, dcn_data=2), devices)
  assert grid.shape == (2, 4, 1)
  slices = np.vectorize(lambda d: d.slice_index)(grid)
  assert (slices[0] == 0).all() and (slices[1] == 1).all()  # fsdp stays inside a slice
  with pytest.raises(ValueError, match="mesh.dcn_data, mesh.dcn_fsdp, mesh.dcn_tensor"):
    parallel.device_grid(dict(data=1, fsdp=4, dcn_data=4), devices)
