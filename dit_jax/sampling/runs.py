"""Reading a training run for sampling and evaluation: its recorded config and the EMA
parameters of a checkpoint, restored onto any sharding plan."""
import jax
import jax.numpy as jnp
import ml_collections

from dit_jax import engine, parallel, paths
from dit_jax.config import model_input_shape, with_defaults
from dit_jax.engine import checkpoint
from dit_jax.engine.compile_cache import CompilationCache, cache_dir
from dit_jax.engine.loop import read_run_config
from dit_jax.errors import MissingFileError
from dit_jax.models import contract, create_model


def single_device_plan() -> parallel.ShardingPlan:
  return parallel.ShardingPlan.create(dict(data=1, rules="dp"), devices=jax.devices()[:1])


def compilation_cache(workdir, path: str | None = None) -> CompilationCache:
  """JAX's persistent compilation cache for sampling or evaluating the run in `workdir`: `path`
  ('' none), or by default the run's own (train.compilation_cache_dir), where its training
  left the programs it compiled."""
  if path is not None:
    return CompilationCache(path or None)
  recorded = read_run_config(workdir)
  if recorded is None:  # not a run: load_run says so
    return CompilationCache(None)
  train = with_defaults(recorded).train
  return CompilationCache(cache_dir(train.compilation_cache_dir, workdir),
                          train.compilation_cache_min_compile_s)


def load_run(workdir, plan: parallel.ShardingPlan | None = None, step: int | None = None,
             raw: bool = False) -> tuple[ml_collections.ConfigDict, engine.TrainState]:
  """The config and the EMA parameters of the newest intact checkpoint of a run directory
  (or of checkpoint `step`), for sampling and evaluation, restored onto `plan` (default: one
  device), whatever mesh the run was trained on. Only `step` and `ema_params` of the returned
  state are filled, and `params` (the trained, raw ones) with `raw`: the optimizer state is
  never read, so neither damage nor a change there blocks sampling."""
  workdir = paths.as_path(workdir)
  path = workdir / "config.json"
  paths.check_bucket(workdir)
  if not paths.is_remote(workdir) and not workdir.is_dir():  # (a bucket has no folders)
    raise MissingFileError(f"--workdir {workdir} is not a directory: pass the directory "
                           "written by `dit-jax train`")
  if "config.json" not in paths.list_names(workdir):
    raise MissingFileError(f"{path} not found: --workdir must be a directory written by "
                           "`dit-jax train`")
  config = with_defaults(read_run_config(workdir))  # fields added since it was recorded
  plan = plan or single_device_plan()
  model = create_model(config.model)
  task = engine.Task(init=contract.params_init(model, model_input_shape(config.data)),
                     loss=None)
  abstract = engine.abstract_params(task, plan)
  restored = checkpoint.restore_params(
      workdir / "checkpoints", {"ema_params": abstract, **({"params": abstract} if raw else {})},
      report=print, step=step)
  if restored is None:
    raise MissingFileError(f"no checkpoint in {workdir / 'checkpoints'}: train first")
  step, tree = restored
  return config, engine.TrainState(step=jnp.int32(step), params=tree.get("params"),
                                   ema_params=tree["ema_params"], opt_state=None, rng=None)
