"""Sweeps: one base run, named override sets and seeds, each trained with the normal training
machinery (`denoiser.train_and_evaluate`: same loop, checkpoints, evaluation hook) and summarised
by `dit_jax.studies.sweep_report`.

A sweep file is a config file with a second function:

    def get_config(arg=""):   # the base run, as for `dit-jax train`
    def get_sweep(arg=""):    # what varies
      return dict(
          title="Conditioning designs",
          axes={"model.conditioning": ["adaln_zero", "adaln"]},   # their product (optional)
          runs={"S/4": {"model.hidden_size": 32, "model.patch_size": 4}},  # named (optional)
          seeds=[0, 1, 2])    # config.seed and config.data.seed of each repetition

Every named set is crossed with every point of the axes and every seed. Run directories are
`WORKDIR/runs/<name>/seed_<seed>`; a finished one (its result.json) is skipped, an interrupted
one resumes from its checkpoints, a failed one (error.txt) is retried on the next call. All
runs share one compilation cache, `WORKDIR/compilation_cache` (unless the config names one).
WORKDIR may be a bucket (gs://): side-by-side workers claim runs by creating an object only if
it is absent, and write their logs locally while they run (copied to WORKDIR/logs at the end).
"""
import copy
import dataclasses
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import ml_collections

from dit_jax import paths, state_files
from dit_jax.config import (ConfigError, apply_overrides, config_code, config_module, set_fields,
                            validate)
from dit_jax.engine.compile_cache import DEFAULT_DIR
from dit_jax.engine.loop import check_resume, read_run_config
from dit_jax.errors import DitJaxError, InputError
from dit_jax.state_files import read_json, write_atomic, write_json

SWEEP_KEYS = ("title", "description", "axes", "runs", "seeds", "metrics")
DEFAULT_METRICS = ("eval/fd", "eval/accuracy", "loss")


@dataclasses.dataclass(frozen=True)
class Sweep:
  title: str
  description: str
  axes: dict        # field -> values, crossed
  runs: dict        # name -> {field: value}
  seeds: tuple
  metrics: tuple    # what the report tabulates and plots (keys of metrics.jsonl rows)


@dataclasses.dataclass(frozen=True)
class RunSpec:
  name: str
  seed: int
  fields: dict      # set on the base config (then config.seed = config.data.seed = seed)
  workdir: object   # an epath.Path, local or gs://


def _sweep_of(raw, where: str) -> Sweep:
  raw = raw.to_dict() if isinstance(raw, ml_collections.ConfigDict) else dict(raw)
  unknown = set(raw) - set(SWEEP_KEYS)
  if unknown:
    raise ConfigError(f"{where}: get_sweep() returned unknown keys {sorted(unknown)}; it may "
                      f"hold {', '.join(SWEEP_KEYS)}")
  axes, runs = dict(raw.get("axes") or {}), dict(raw.get("runs") or {})
  for field, values in axes.items():
    if isinstance(values, str) or not list(values):
      raise ConfigError(f"{where}: axes[{field!r}] must be a non-empty list of values")
  seeds = tuple(raw.get("seeds", (0,)))
  if not seeds or len(set(seeds)) != len(seeds) or not all(isinstance(s, int) for s in seeds):
    raise ConfigError(f"{where}: seeds={list(seeds)} must be distinct integers, e.g. [0, 1, 2]")
  return Sweep(raw.get("title", Path(where).stem), raw.get("description", ""),
               {k: list(v) for k, v in axes.items()}, runs, seeds,
               tuple(raw.get("metrics", DEFAULT_METRICS)))


def with_seeds(sweep: Sweep, seeds) -> Sweep:
  """The sweep restricted to `seeds`, a subset of its own (`dit-jax sweep --seeds`)."""
  missing = sorted(set(seeds) - set(sweep.seeds))
  if missing:
    raise ConfigError(f"--seeds: {missing} not among the sweep's seeds {list(sweep.seeds)}; "
                      "add them to its get_sweep() to train them")
  return dataclasses.replace(sweep, seeds=tuple(s for s in sweep.seeds if s in set(seeds)))


def with_runs(sweep: Sweep, names) -> Sweep:
  """The sweep restricted to the named sets `names` (`dit-jax sweep --runs`), each crossed
  with the axes as before: a later call can train the others into the same --workdir."""
  missing = [n for n in names if n not in sweep.runs]
  if missing:
    raise ConfigError(f"--runs: {missing} not among the sweep's named runs "
                      f"{list(sweep.runs) or '(it has none: only axes)'}")
  return dataclasses.replace(sweep, runs={n: f for n, f in sweep.runs.items() if n in names})


def load(spec: str, overrides: list[str] = ()) -> tuple[ml_collections.ConfigDict, Sweep]:
  """(base config with --config.* overrides applied, the sweep) of 'configs/sweeps/F.py[:arg]'."""
  module, arg = config_module(spec)
  if not hasattr(module, "get_sweep"):
    raise ConfigError(f"--config {spec}: a sweep file needs get_sweep(arg) next to "
                      "get_config(arg); see configs/sweeps/")
  with config_code(spec.partition(":")[0]):
    config, raw = [f(arg) if arg else f() for f in (module.get_config, module.get_sweep)]
  base = apply_overrides(validate(config), list(overrides))
  return base, _sweep_of(raw, spec)


def _short(value) -> str:
  return value if isinstance(value, str) else repr(value)


def slug(name: str) -> str:
  """A directory name for a run name ('S/4 conditioning=adaln' -> 'S-4_conditioning=adaln')."""
  return re.sub(r"[^A-Za-z0-9.=+-]+", "_", name.replace("/", "-")).strip("_") or "base"


def expand(sweep: Sweep, root) -> list[RunSpec]:
  """Every (named set x point of the axes) x seed, seeds innermost."""
  specs, dirs = [], {}
  for run_name, run_fields in (sweep.runs or {"": {}}).items():
    for values in itertools.product(*sweep.axes.values()):
      point = dict(zip(sweep.axes, values, strict=True))
      name = " ".join([run_name] + [f"{f.split('.')[-1]}={_short(v)}" for f, v in point.items()])
      name = name.strip() or "base"
      if dirs.setdefault(slug(name), name) != name:
        raise ConfigError(f"sweep runs {dirs[slug(name)]!r} and {name!r} share the directory "
                          f"{slug(name)!r}: rename one")
      for seed in sweep.seeds:
        specs.append(RunSpec(name, seed, {**run_fields, **point},
                             paths.as_path(root) / "runs" / slug(name) / f"seed_{seed}"))
  return specs


def run_config(base: ml_collections.ConfigDict, run: RunSpec) -> ml_collections.ConfigDict:
  """The run's config: the base with its fields and seed; unless the base names another, the
  compilation cache of the whole sweep (its seeds and settings compile the same programs)."""
  config = set_fields(copy.deepcopy(base), run.fields, where=f"sweep run {run.name!r}:")
  config.seed = config.data.seed = run.seed
  if config.train.compilation_cache_dir is None:
    config.train.compilation_cache_dir = shared_cache_dir(run)
  return config


def shared_cache_dir(run: RunSpec) -> str:
  """ROOT/compilation_cache of the sweep whose `expand` made `run` (ROOT/runs/<run>/seed_<s>)."""
  return paths.absolute(run.workdir.parents[2] / DEFAULT_DIR)


def counts(config) -> dict:
  """Forward Gflops (multiply-add = 1 flop) and parameters of one input of the run's model."""
  from dit_jax.config import model_input_shape
  from dit_jax.models import create_model
  from dit_jax.models.flops import count_params
  model = create_model(config.model)
  h, w, c = model_input_shape(config.data)
  return dict(gflops=sum(model.forward_flops(h, w, c).values()) / 1e9,
              params=count_params(model, h, w, c), batch_size=config.data.batch_size,
              steps=config.train.steps, image_shape=[h, w, c])


def _jsonable(value):
  return json.loads(json.dumps(value, default=lambda v: v.to_dict()
                               if isinstance(v, ml_collections.ConfigDict) else repr(v)))


def train_run(run: RunSpec, config, log=print, damaged: str | None = None) -> str:
  """Trains one run unless finished (result.json at config.train.steps or past it: a lower
  train.steps neither retrains nor rewrites it; a higher one trains it further); returns
  'finished', 'trained' or 'failed' (error.txt). A run whose recorded config is `damaged` (the
  message) is not trained: it fails with that message. A signal (engine.Preempted)
  propagates: the run is saved and the sweep stops."""
  import jax

  from dit_jax.engine import Preempted
  from dit_jax.training import denoiser
  result, error = run.workdir / "result.json", run.workdir / "error.txt"
  if (recorded := read_result(run, log)) is not None and recorded["steps"] >= config.train.steps:
    if damaged:
      log(f"!! {run.name} seed {run.seed}: {damaged} (the run is finished: its result counts)")
    return "finished"
  if damaged:
    write_atomic(error, damaged + "\n")
    log(f"!! {run.name} seed {run.seed}: {damaged}; not trained, counted as failed; the other "
        "runs go on")
    return "failed"
  paths.make_dirs(run.workdir)
  state_files.remove(result)
  state_files.remove(error)
  log(f"== {run.name} seed {run.seed} -> {run.workdir}")
  start = time.perf_counter()
  try:
    state = denoiser.train_and_evaluate(config, str(run.workdir))
  except Preempted:
    raise
  except Exception as e:  # noqa: BLE001  one run's failure (divergence, a bad field) is its own
    write_atomic(error, traceback.format_exc())
    why = (str(e).strip() or type(e).__name__).splitlines()[0][:300]
    log(f"!! {run.name} seed {run.seed} failed ({type(e).__name__}: {why}); see {error}")
    return "failed"
  finally:
    seconds = _add_seconds(run.workdir, time.perf_counter() - start)
  info = dict(name=run.name, seed=run.seed, fields=_jsonable(run.fields), seconds=seconds,
              devices=f"{jax.device_count()} x {jax.devices()[0].device_kind}", **counts(config))
  info["steps"] = int(state.step)  # a checkpoint past train.steps stays where it is
  write_json(result, info, indent=1)
  return "trained"


def read_result(run: RunSpec, log=print) -> dict | None:
  """The run's result.json; None when it has none or a damaged one (a write cut short): such a
  run is reported as unfinished and trained again (it resumes from its checkpoints), without
  blocking the other runs."""
  try:
    info = read_json(run.workdir / "result.json", "a sweep run's result")
  except FileNotFoundError:
    return None
  except InputError as e:
    log(f"!! {run.name} seed {run.seed}: {e}; counted as unfinished, the next sweep call "
        "trains it again (from its checkpoints)")
    return None
  if not isinstance(info, dict) or "steps" not in info:
    log(f"!! {run.name} seed {run.seed}: {run.workdir / 'result.json'} is not a result; "
        "counted as unfinished")
    return None
  return info


def _add_seconds(workdir, seconds: float) -> float:
  """Adds `seconds` to the run's wall clock summed over the calls that trained it (resumes
  included); returns the sum."""
  path = workdir / "wall.json"
  try:
    total = seconds + float(read_json(path, "the run's wall clock")["seconds"])
  except FileNotFoundError:
    total = seconds
  except (InputError, KeyError, TypeError, ValueError) as e:
    print(f"!! {e if isinstance(e, InputError) else f'{path} is damaged'}: the wall clock of "
          "this run restarts from this call")
    total = seconds
  write_json(path, dict(seconds=total))
  return total


def check_recorded(runs: list[RunSpec], configs: list) -> dict[Path, str]:
  """Refuses a sweep whose runs already on disk were trained with other fields (before any
  training), naming the run and the fields: a changed sweep needs a new --workdir. Returns
  {workdir: message} of the runs whose recorded config is damaged: those cannot be checked,
  so they are not trained, and block no other run."""
  damaged = {}
  for run, config in zip(runs, configs, strict=True):
    try:
      saved = read_run_config(run.workdir)
    except InputError as e:
      damaged[run.workdir] = str(e)
      continue
    if saved is not None:
      try:
        check_resume(saved, config, run.workdir)
      except ValueError as e:
        raise ConfigError(f"sweep run {run.name!r} seed {run.seed}: {e}") from None
  return damaged


def run_all(base, sweep: Sweep, root, shard: tuple[int, int] = (0, 1), log=print) -> dict:
  """Trains the runs back to back; returns {status: count}. Worker i of n side-by-side
  workers (shard (i, n), n > 1) trains each run it claims first, so a worker that finishes
  early takes the next run instead of idling while another has several left."""
  runs = expand(sweep, root)
  configs = [run_config(base, r) for r in runs]  # every run's fields checked before any trains
  damaged = check_recorded(runs, configs)
  index, count = shard
  status = {"finished": 0, "trained": 0, "failed": 0}
  for run, config in zip(runs, configs, strict=True):
    if count == 1 or _claim(paths.as_path(root), run, index):
      status[train_run(run, config, log, damaged.get(run.workdir))] += 1
  return status


def _claim(root, run: RunSpec, worker: int) -> bool:
  """True for the one worker that creates the run's claim file (create-if-absent: an exclusive
  link locally, ifGenerationMatch=0 in a bucket)."""
  path = root / "claims" / f"{run.workdir.parent.name}.seed_{run.seed}"
  paths.make_dirs(path.parent)
  return state_files.create_exclusive(path, f"worker {worker}\n")


def shard_env(index: int, devices_per_run: int) -> dict:
  """Environment of side-by-side worker `index`: its own GPUs, or that many fake CPU devices."""
  ids = range(index * devices_per_run, (index + 1) * devices_per_run)
  env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(map(str, ids)))
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count="
                                       f"{devices_per_run}"])
  return env


class WorkersStopped(DitJaxError):
  """A signal to the parent of side-by-side workers, which it passed on to them and waited
  for; `exit_status` is 128 + signal, as for a process the signal killed."""

  def __init__(self, signum: int, workers: int):
    self.signum, self.exit_status = signum, 128 + signum
    super().__init__(f"{signal.Signals(signum).name}: stopped the {workers} sweep workers, "
                     "which saved their runs; rerun the same command to resume")


class _ForwardSignals:
  """While installed, SIGTERM and SIGINT to the parent go on to every worker as SIGTERM (the
  workers save their runs and stop, as `dit-jax train` does) instead of stopping the parent,
  which keeps waiting for them: a parent that died first left its workers training on."""
  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, procs: list):
    self.procs, self.signum, self._previous = procs, None, {}

  def _handle(self, signum, frame):
    self.signum = signum
    for p in self.procs:
      p.send_signal(signal.SIGTERM)  # a no-op for a worker already reaped

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():  # where handlers can be set
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)


def _log_folder(root):
  """Where the workers' logs go while they run: ROOT/logs, or for a gs:// ROOT a local
  temporary folder (a process writes its output to a local file), copied there after."""
  if paths.is_remote(root):
    return paths.as_path(tempfile.mkdtemp(prefix="dit-jax-sweep-logs-"))
  folder = paths.as_path(root) / "logs"
  folder.mkdir(parents=True, exist_ok=True)
  return folder


def run_side_by_side(argv: list[str], workers: int, devices_per_run: int, root,
                     log=print) -> int:
  """Runs `dit-jax sweep ARGV --shard i/workers` in `workers` processes, each seeing its own
  `devices_per_run` devices; logs in ROOT/logs/ (for a bucket, local ones copied there when
  the workers end). Returns how many workers failed; raises WorkersStopped after a SIGTERM /
  SIGINT, passed on to the workers, once they all stopped."""
  paths.make_dirs(root)
  state_files.remove_tree(paths.as_path(root) / "claims")  # the workers claim runs afresh
  folder = _log_folder(root)
  logs, procs = [folder / f"shard_{i}.log" for i in range(workers)], []
  with _ForwardSignals(procs) as forward:
    for i, log_path in enumerate(logs):
      if forward.signum is not None:
        break  # stopped while starting them
      with open(log_path, "w") as out:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "dit_jax.cli", "sweep", *argv, "--shard", f"{i}/{workers}"],
            stdout=out, stderr=subprocess.STDOUT, env=shard_env(i, devices_per_run)))
      if forward.signum is not None:  # the signal came while this one started
        procs[-1].send_signal(signal.SIGTERM)
      log(f"worker {i}: pid {procs[-1].pid}, log {log_path}")
    codes = [p.wait() for p in procs]  # a signal handler returns into the wait
  if paths.is_remote(root):
    paths.upload_tree(folder, paths.as_path(root) / "logs")
    shutil.rmtree(folder)
    logs = [paths.as_path(root) / "logs" / p.name for p in logs]
  if forward.signum is not None:
    raise WorkersStopped(forward.signum, len(procs))
  for i, code in enumerate(codes):
    if code:
      log(f"worker {i} exited with status {code}; see {logs[i]}")
  return sum(1 for code in codes if code)
