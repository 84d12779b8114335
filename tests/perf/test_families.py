"""`aot` and `bench` for every model family the configs build: DiT (quickstart), U-Net, MM-DiT
double / single / hybrid and the text DiT, each shrunk with config fields. The train step is
compiled ahead of time for a TPU slice and a GPU host (skipped without libtpu / JAX's CUDA
plugin) and timed on the CPU devices; the figures are checked against counts made here."""
import functools
import importlib.util
import math
from pathlib import Path

import jax
import numpy as np
import pytest

from dit_jax.config import apply_overrides, load_config, model_input_shape
from dit_jax.models import create_model, example_inputs
from dit_jax.nn.attention import BACKENDS
from dit_jax.perf import aot, bench

CONFIGS = Path(__file__).parents[2] / "configs"
BATCH = 8
SMALL_MMDIT = ["model.text_depth=0", "data.image_size=16"]  # captions embedded, no encoder
FAMILIES = {  # name -> (config spec, overrides that shrink it)
    "dit": ("quickstart.py", ["model.depth=1", "model.hidden_size=32", "model.num_heads=2"]),
    "unet": ("unet.py", ["model.base_channels=16", "model.channel_mult=(1,)",
                         "model.attention_levels=(0,)"]),
    "mmdit_double": ("mmdit.py:mmdit_double", ["model.depth_double=1", *SMALL_MMDIT]),
    "mmdit_single": ("mmdit.py:mmdit_single", ["model.depth_single=1", *SMALL_MMDIT]),
    "mmdit_hybrid": ("mmdit.py:mmdit_hybrid", ["model.depth_double=1", "model.depth_single=1",
                                               *SMALL_MMDIT]),
    "text_dit": ("mmdit.py:dit_cross", ["model.depth=1", *SMALL_MMDIT]),
}
TARGETS = {"v5e-4": "libtpu", "h100": "jax_plugins.xla_cuda12"}


def family_config(name):
  spec, overrides = FAMILIES[name]
  config = load_config(str(CONFIGS / spec))
  return apply_overrides(config, [*overrides, f"data.batch_size={BATCH}"])


@functools.cache
def param_bytes(family: str) -> int:
  """Bytes of the model's parameters, from the module's own shapes (not the engine's)."""
  config = family_config(family)
  model = create_model(config.model)
  x, t, cond = example_inputs(model, model_input_shape(config.data))
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, cond)["params"]
  return sum(math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
             for leaf in jax.tree.leaves(shapes))


def batch_bytes(config) -> int:
  """Bytes of one training batch: the images and the model's condition arrays."""
  model = create_model(config.model)
  x, _, cond = example_inputs(model, model_input_shape(config.data), batch=BATCH)
  return sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize
             for a in jax.tree.leaves((x, cond)))


def forward_macs(config) -> int:
  model = create_model(config.model)
  return sum(model.forward_flops(*model_input_shape(config.data)).values())


@pytest.fixture(scope="module")
def targets():
  """The compile-only targets whose compiler is installed here, made once."""
  return {name: aot.Target.create(name) for name, module in TARGETS.items()
          if importlib.util.find_spec(module) is not None}


@pytest.mark.parametrize("topology", TARGETS)
@pytest.mark.parametrize("family", FAMILIES)
def test_train_step_compiles_ahead_of_time(family, topology, targets):
  if topology not in targets:
    pytest.skip(f"{TARGETS[topology]} is not installed: it compiles for {topology}")
  config, target = family_config(family), targets[topology]
  compiled, report = aot.compile_step(config, target)
  assert compiled is not None and report.model == config.model.name
  assert report.step == "train" and report.batch == BATCH
  # Data parallel: every device holds the whole state (parameters, EMA, two AdamW moments,
  # a few scalars) and its share of the batch; a TPU pads small arrays to its (8, 128) tiles.
  devices = len(target.devices)
  state, batch = 4 * param_bytes(family), batch_bytes(config) // devices
  assert state + batch <= report.memory["arguments"]
  if topology == "h100":
    assert report.memory["arguments"] <= state + batch + 1024
  assert report.analytic_flops == pytest.approx(3 * 2 * forward_macs(config) * BATCH / devices)
  if topology == "v5e-4":  # libtpu counts flops; XLA's GPU compiler needs a GPU for it
    assert report.xla_flops > 0
  assert report.attention != "n/a"
  assert set(report.attention.split("/")) <= set(BACKENDS)
  assert report.fits and report.model in aot.format_table(report)


@pytest.mark.parametrize("family", FAMILIES)
def test_train_step_benchmarks_on_cpu(family):
  config = family_config(family)
  model, image_shape = create_model(config.model), model_input_shape(config.data)
  result = bench.bench_train_step(model, image_shape, BATCH, steps=1, config=config)
  seconds = result.step_ms / 1000
  assert np.isfinite(result.images_per_s) and result.images_per_s > 0
  assert result.images_per_s == pytest.approx(BATCH / seconds)
  devices = jax.device_count()  # the default mesh: data parallel over every device
  assert result.train_tflops_per_s == pytest.approx(
      3 * 2 * forward_macs(config) * BATCH / seconds / devices / 1e12)
