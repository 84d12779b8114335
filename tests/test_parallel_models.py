"""Every backbone runs sharded and gives the single-device numbers: the logical axis names of
U-Net and MM-DiT parameters map onto the mesh like DiT's (tests/test_parallel.py covers DiT
under each preset). The FSDP + tensor preset uses every rule the other presets use, so one
(2, 2, 2) mesh per backbone keeps the compile time down."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax import engine, flow, parallel
from dit_jax.config import base_config
from dit_jax.models import create_model, example_condition
from dit_jax.training import denoiser

BACKBONES = {  # name -> (config.model, input shape)
    # One level: the sharded-equals-single-device check needs every kind of U-Net layer (res
    # block, spatial transformer, middle block), not two resolutions; compile time dominates.
    "UNet cross_attn": (dict(name="UNet-small", base_channels=16, channel_mult=(1,),
                             attention_levels=(0,), num_groups=4, num_heads=2,
                             conditioning="cross_attn"), (8, 8, 1)),
    "MMDiT hybrid": (dict(name="MMDiT", hidden_size=32, num_heads=2, depth_double=1,
                          depth_single=1, vocab_size=16, text_length=4, text_width=16,
                          text_depth=1, text_heads=2), (8, 8, 3)),
    "TextDiT cross_attn": (dict(name="TextDiT", hidden_size=32, num_heads=2, depth=1,
                                text_conditioning="cross_attn", vocab_size=16, text_length=4,
                                text_width=16, text_depth=1, text_heads=2), (8, 8, 3)),
}
MESHES = {"fsdp_tp": (2, 2, 2)}


def random_batch(model, shape, size=8, seed=0):
  """Images plus a random value for every condition key, shaped by the model's spec."""
  rng = np.random.default_rng(seed)
  batch = {"image": rng.standard_normal((size, *shape)).astype(np.float32)}
  for key, value in (example_condition(model, size) or {}).items():
    value = np.asarray(value)
    if value.dtype == bool:
      batch[key] = np.arange(value.shape[-1]) < rng.integers(1, value.shape[-1] + 1, (size, 1))
    elif np.issubdtype(value.dtype, np.integer):
      batch[key] = rng.integers(0, 10, value.shape).astype(value.dtype)
    else:
      batch[key] = rng.standard_normal(value.shape).astype(value.dtype)
  return batch


@pytest.mark.parametrize("backbone", BACKBONES)
def test_backbone_sharded_step_equals_single_device(backbone):
  model_config, shape = BACKBONES[backbone]
  model = create_model(model_config)
  config = base_config()
  optimizer, schedule = engine.make_optimizer(config.optim, 10)
  objective = flow.make_objective(config.objective)
  batch = random_batch(model, shape)

  # One compiled init rather than op-by-op (a compile per parameter shape); like the sharded
  # init below, which is jitted too.
  state = jax.jit(lambda rng: engine.create_state(denoiser.denoiser_task(model, None, shape), optimizer, rng))(
      jax.random.PRNGKey(0))
  reference, ref_metrics = engine.make_step_fn(denoiser.denoiser_task(model, objective, None), schedule)(
      state, jax.tree.map(jnp.asarray, batch))
  reference = jax.device_get(reference)

  for rules, (data, fsdp, tensor) in MESHES.items():
    plan = parallel.ShardingPlan.create(dict(data=data, fsdp=fsdp, tensor=tensor, rules=rules))
    _, shardings = engine.state_shardings(denoiser.denoiser_task(model, None, shape), optimizer, plan)
    sharded = engine.init_state(denoiser.denoiser_task(model, None, shape), optimizer, jax.random.PRNGKey(0), plan)
    step_fn = engine.make_step_fn(denoiser.denoiser_task(model, objective, None), schedule, plan, shardings)
    sharded, metrics = step_fn(sharded, plan.global_batch(batch))
    np.testing.assert_allclose(float(metrics["loss"]), float(ref_metrics["loss"]), rtol=1e-5,
                               err_msg=rules)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                         rtol=2e-5, atol=2e-6, err_msg=rules),
                 sharded.params, reference.params)
    split = {s.spec for s in jax.tree.leaves(shardings.params) if not s.is_fully_replicated}
    used = {axis for spec in split for entry in spec if entry for axis in (
        (entry,) if isinstance(entry, str) else entry)}
    assert used == {"fsdp", "tensor"}, f"{backbone}: parameters split over {used}"
