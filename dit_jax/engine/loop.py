"""The loop of the one training engine: restore or initialise the state, train with hooks
(logs, checkpoints, signals, sample grids, evaluators, profiler), save.

Restarting with the same command resumes exactly: the step, the optimizer and EMA state, the
data iterator position and the per-step random keys (fold_in(seed key, step)) all come back.
Guarantees (README "Reliability"): checkpoints are atomic and written only from a finite,
checked state; a damaged newest checkpoint falls back to the newest intact one; the recorded
config changes only after a resume succeeded; one writer per workdir; SIGTERM/SIGINT save and
stop with exit status 128 + signal, every process at the same step (`stopping.py`). Programs
compile through the persistent cache (`compile_cache.py`); the log rows carry TFLOP/s, MFU
and the goodput of the run so far (`goodput.py`), and a goodput summary ends the run.
"""
import dataclasses
import json
import shutil
import tempfile
from collections import deque
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from dit_jax import chips, parallel, paths
from dit_jax.config import meaning_changes, validate
from dit_jax.engine import checkpoint
from dit_jax.engine.compile_cache import CompilationCache, CompileCounter, cache_dir
from dit_jax.engine.goodput import Goodput, summary_line
from dit_jax.engine.run_log import MetricsLog
from dit_jax.engine.stopping import Preempted, StopAgreement
from dit_jax.engine.state import (CheckpointableIterator, Task, TrainState, init_state,
                                  prepare)
from dit_jax.engine.workdir_lock import WorkdirLock
from dit_jax.errors import InputError, RunFailedError
from dit_jax.state_files import read_json, write_atomic

# ------------------------------------------------------------------------------------------
# Stopping on divergence (on a signal: stopping.py)


class DivergenceError(RunFailedError, FloatingPointError):
  pass


class DivergenceGuard:
  """Checks fetched per-step metrics before anything is saved: a non-finite step (loss,
  gradient norm or parameters) always stops the run; with `spike_factor` > 0 so does a loss
  above spike_factor x the median of the last `window` losses (after `window` steps)."""

  def __init__(self, spike_factor: float = 0.0, window: int = 100, where: str = ""):
    self.spike_factor = spike_factor
    self.recent = deque(maxlen=window)
    self.where = where

  def check(self, steps_metrics: list[tuple[int, dict]]):
    for step, m in steps_metrics:
      loss = float(m["loss"])
      if not m.get("finite", 1.0) or not np.isfinite(loss):
        raise DivergenceError(
            f"step {step} is not finite (loss {loss:.4g}, grad_norm {float(m['grad_norm']):.4g}): "
            f"training stopped and no checkpoint was written after it (the last good one is "
            f"kept{self.where}). Lower optim.lr, set optim.grad_clip, or check the data")
      if self.spike_factor > 0 and len(self.recent) == self.recent.maxlen:
        median = float(np.median(self.recent))
        if loss > self.spike_factor * median:
          raise DivergenceError(
              f"loss {loss:.4g} at step {step} is above train.spike_factor={self.spike_factor} "
              f"x the median {median:.4g} of the last {len(self.recent)} steps: training "
              f"stopped before saving (the last good checkpoint is kept{self.where}). Lower "
              "optim.lr or set optim.grad_clip; train.spike_factor=0 turns this guard off")
      self.recent.append(loss)


# ------------------------------------------------------------------------------------------
# Hooks


def is_due(step: int, every: int, total: int, at_end: bool = True) -> bool:
  """The one cadence rule of hooks, logs and checkpoints: every `every` steps (0: never), and
  at the last step `total` when `at_end`."""
  return (every > 0 and step % every == 0) or (at_end and step == total)


@dataclasses.dataclass
class Periodic:
  """`action(step, state)` every `every` steps, at the steps of `at_steps` (e.g. the steps of
  equal training compute across a sweep's models) and at the last step when `at_end`; a dict
  it returns is logged as metrics (evaluators). Every process calls it (sharded parameters)."""
  name: str
  every: int
  action: Callable[[int, TrainState], dict | None]
  at_end: bool = True
  at_steps: tuple = ()

  def due(self, step: int, total: int) -> bool:
    return is_due(step, self.every, total, self.at_end) or step in self.at_steps


class Profile:
  """A jax.profiler trace of steps [start, start + steps) into workdir/profile (TensorBoard's
  profile plugin or Perfetto read it). The profiler writes local files only: for a workdir in
  a bucket the trace goes to a local temporary folder, uploaded when the trace stops."""

  def __init__(self, workdir, start: int, steps: int):
    self.dir, self.start, self.stop = paths.as_path(workdir) / "profile", start, start + steps
    self.active, self.local = False, None

  def before(self, step: int):  # step = steps completed so far
    if not self.active and self.start <= step < self.stop:
      self.local = tempfile.mkdtemp(prefix="dit-jax-profile-") if paths.is_remote(self.dir) \
          else None
      jax.profiler.start_trace(self.local or str(self.dir))
      self.active = True

  def after(self, step: int, state):
    if self.active and step >= self.stop:
      jax.block_until_ready(state)
      self.close()

  def close(self):
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
      if self.local is not None:
        try:
          paths.upload_tree(self.local, self.dir)
        finally:
          shutil.rmtree(self.local, ignore_errors=True)
          self.local = None


# ------------------------------------------------------------------------------------------
# The run: restore, loop, save


def read_run_config(workdir) -> dict | None:
  """The config recorded in workdir/config.json; None when there is none. A damaged one is an
  InputError naming the file: it is what a resume is checked against."""
  path = paths.as_path(workdir) / "config.json"
  fix = ("restore it from a backup, or delete it to resume without the check that the config "
         "still means the same")
  try:
    config = read_json(path, "the run's recorded config", fix=fix)
  except FileNotFoundError:
    return None
  if not isinstance(config, dict):
    raise InputError(f"{path} (the run's recorded config) is damaged (a JSON "
                     f"{type(config).__name__}, not the config's object): {fix}")
  return config


def check_resume(saved: dict | None, config: ml_collections.ConfigDict, workdir):
  """A resumed run must mean the same thing: refuses every differing field that is not in
  config.RESUMABLE_FIELDS, naming old and new values."""
  changes = meaning_changes(saved, json.loads(config.to_json())) if saved is not None else []
  if changes:
    lines = "; ".join(f"{field}: {old!r} -> {new!r}" for field, old, new in changes)
    raise InputError(
        f"workdir {workdir} holds a run with a different config ({lines}). These fields change "
        "what the checkpoint means: resume with the recorded values (config.json) or pick a new "
        "--workdir")


@dataclasses.dataclass
class Run:
  """Everything `run` needs besides the task; built by train.py, vae_train.py, experiments."""
  config: ml_collections.ConfigDict   # the whole config: recorded, checked on resume
  workdir: Any                        # a local path or gs://BUCKET/...: see dit_jax.paths
  data: CheckpointableIterator
  plan: parallel.ShardingPlan
  hooks: list = dataclasses.field(default_factory=list)   # Periodic
  on_start: Callable[[TrainState], None] | None = None
  initial_params: Any = None   # a fresh run starts from these (fine-tuning), not from init
  flops_per_step: float | None = None   # model flops of one train step: TFLOP/s and MFU logged


def run(task: Task, r: Run) -> TrainState:
  """Trains `task` for config.train.steps on r.data; writes checkpoints, logs, config.json and
  what the hooks write to r.workdir. Returns the final state; raises Preempted after a signal
  made it save and stop, DivergenceError on a non-finite or spiking step (nothing saved after
  the last good step). Compiles with the persistent cache of train.compilation_cache_dir."""
  config = validate(r.config)
  cache = cache_dir(config.train.compilation_cache_dir, r.workdir)
  with CompilationCache(cache, config.train.compilation_cache_min_compile_s), \
       CompileCounter() as compiled:
    return _run(task, r, config, Goodput(compiled.compile_seconds))


def _run(task: Task, r: Run, config, clock: Goodput) -> TrainState:
  workdir, plan = paths.as_path(r.workdir), r.plan
  r.workdir = workdir
  is_main = jax.process_index() == 0
  s = prepare(task, config, plan)
  paths.make_dirs(workdir)
  with WorkdirLock(workdir, enabled=is_main), \
       checkpoint.Checkpointer(workdir / "checkpoints", config.train.keep_checkpoints) as ckpt:
    saved_config = read_run_config(workdir) if ckpt.all_steps() else None
    check_resume(saved_config, config, workdir)
    with clock.timed("checkpoint"):
      restored = ckpt.restore_latest_intact(s.abstract_state(), quarantine=is_main,
                                            report=print if is_main else None)
    if jax.process_count() > 1:  # every process sees the steps process 0 moved aside
      multihost_utils.sync_global_devices("checkpoint restored")
      ckpt.manager.reload()
    if restored is None:
      state = init_state(task, s.optimizer, jax.random.PRNGKey(config.seed), plan, s.ema)
      if r.initial_params is not None:
        state = start_from(state, r.initial_params, s.shardings)
    else:
      state, data_state = restored
      if data_state is not None:
        r.data.set_state(data_state)
    if is_main:  # only now: a refused or failed resume leaves the recorded config as it was
      write_atomic(workdir / "config.json", config.to_json(indent=2))
    if r.on_start is not None:
      r.on_start(state)
    return _loop(task, r, state, ckpt, s.step_fn, clock)


def start_from(state: TrainState, params, shardings) -> TrainState:
  """`state` with its parameters and EMA replaced by `params` (same tree and shapes, placed in
  the state's shardings); the optimizer moments stay at their initial zeros."""
  expected = {jax.tree_util.keystr(k): v.shape
              for k, v in jax.tree_util.tree_leaves_with_path(state.params)}
  given = {jax.tree_util.keystr(k): np.shape(v)
           for k, v in jax.tree_util.tree_leaves_with_path(params)}
  problems = [f"{k}: missing" for k in expected if k not in given]
  problems += [f"{k}: unexpected" for k in given if k not in expected]
  problems += [f"{k}: {given[k]} != {shape}" for k, shape in expected.items()
               if k in given and given[k] != shape]
  if problems:
    raise InputError("train.init_from holds parameters of another architecture than "
                     f"config.model ({'; '.join(problems[:8])}"
                     f"{'; ...' if len(problems) > 8 else ''}): make config.model match it")
  cast = jax.tree.map(lambda p, ref: np.asarray(p, ref.dtype), params, state.params)
  return state.replace(params=jax.device_put(cast, shardings.params),
                       ema_params=jax.device_put(cast, shardings.ema_params))


def _metrics_log(r: Run, total_steps: int) -> MetricsLog:
  return MetricsLog(r.workdir, enabled=jax.process_index() == 0, total_steps=total_steps,
                    images_per_step=r.config.data.batch_size, flops_per_step=r.flops_per_step,
                    peak_flops=chips.peak_flops(jax.devices()[0].device_kind),
                    devices=jax.device_count())


def _loop(task, r: Run, state, ckpt, step_fn, clock: Goodput):
  tc, plan, total_steps = r.config.train, r.plan, int(r.config.train.steps)
  log = _metrics_log(r, total_steps)
  guard = DivergenceGuard(float(tc.spike_factor), int(tc.spike_window),
                          where=f" in {r.workdir / 'checkpoints'}")
  profile = Profile(r.workdir, int(tc.profile_start), int(tc.profile_steps))
  step = first = int(state.step)
  stop = StopAgreement(step, int(tc.stop_check_every))
  if step >= total_steps:
    log.message(f"nothing to train: the run is at step {step} and train.steps={total_steps}")
  try:
    log.start(step)
    while step < total_steps:
      profile.before(step)
      with clock.timed("data"):
        local = next(r.data)
        batch = plan.global_batch({key: local[key] for key in task.batch_keys})
      state, metrics = step_fn(state, batch)
      step += 1
      if step == first + 1:  # once: the time to the first step (compiled, restored, run)
        jax.block_until_ready(metrics)
        clock.first_step_done()
      log.add(step, metrics)
      profile.after(step, state)
      signum = stop.check(step)
      saving = is_due(step, tc.checkpoint_every, total_steps) or signum is not None
      if saving or is_due(step, tc.log_every, total_steps):
        guard.check(log.flush(step, clock.shares()))  # raises before a bad step is saved
      if saving:
        with clock.timed("checkpoint"):
          ckpt.save(step, state, r.data.get_state())
      _run_hooks(r.hooks, step, total_steps, state, log, clock)
      if signum is not None:
        raise Preempted(step, signum, state)
    if step > first:
      _summarize(log, clock, step)
  except Preempted:
    _summarize(log, clock, step)
    raise
  finally:
    profile.close()
    stop.restore()
    log.close()
  return state


def _run_hooks(hooks, step: int, total_steps: int, state, log: MetricsLog, clock: Goodput):
  due = [hook for hook in hooks if hook.due(step, total_steps)]
  if due:
    jax.block_until_ready(state)  # the steps in flight are the steps', not the hooks', time
  for hook in due:
    with clock.timed("hooks"):
      values = hook.action(step, state)
    log.scalars(step, values or {})


def _summarize(log: MetricsLog, clock: Goodput, step: int):
  """The goodput of the whole run, as a row of metrics.jsonl and a console line."""
  summary = clock.summary()
  log.scalars(step, summary)
  log.message(summary_line(summary))
