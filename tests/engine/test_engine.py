"""The engine on a toy task (linear regression on in-memory arrays): resume, signals, guards,
checkpoint fallback, workdir lock, the recorded config, the compilation cache and the goodput
of the log. Fast: no model, no TFDS."""
import dataclasses
import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax import engine, parallel
from dit_jax.config import base_config
from dit_jax.data.arrays import ArrayIterator
from dit_jax.engine import checkpoint
from dit_jax.engine.compile_cache import CompileCounter
from dit_jax.engine.goodput import PHASES
from dit_jax.engine.workdir_lock import WorkdirLockedError

W_TRUE = np.array([1.0, -2.0, 0.5, 3.0], np.float32)


def toy_task() -> engine.Task:
  def init(rng):
    return {"w": jax.random.normal(rng, (4,)) * 0.1}

  def loss(params, batch, rng):
    noise = 0.01 * jax.random.normal(rng, batch["y"].shape)
    err = batch["image"] @ params["w"] - batch["y"] - noise
    return jnp.mean(err ** 2), {"err_max": jnp.max(jnp.abs(err))}
  return engine.Task(init=init, loss=loss, batch_keys=("image", "y"))


def toy_data(poison_step=None, value=np.inf):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((64, 4)).astype(np.float32)
  it = ArrayIterator({"image": x, "y": x @ W_TRUE}, batch_size=8, seed=1)
  if poison_step is None:
    return it

  class Poisoned(ArrayIterator):
    def __next__(self):
      batch = super().__next__()
      if self.position == poison_step:
        batch = dict(batch, y=batch["y"] * value)
      return batch
  poisoned = Poisoned(it.arrays, 8, seed=1)
  return poisoned


def toy_config(steps=6, **train):
  config = base_config()
  config.data.batch_size = 8
  config.optim.update(lr=0.05, warmup_steps=1, schedule="constant", grad_clip=0.0)
  config.train.update(**{**dict(steps=steps, log_every=1, checkpoint_every=2, sample_every=0,
                               ema_decay=0.5), **train})
  return config


def run(config, workdir, data=None, hooks=()):
  plan = parallel.ShardingPlan.create(dict(data=1), devices=jax.devices()[:1])
  r = engine.Run(config=config, workdir=workdir, data=data or toy_data(), plan=plan,
                 hooks=list(hooks))
  return engine.run(toy_task(), r)


def full_state(workdir, config):
  """The newest checkpoint restored whole (params, EMA, optimizer state, key)."""
  optimizer, _ = engine.make_optimizer(config.optim, config.train.steps)
  plan = parallel.ShardingPlan.create(dict(data=1), devices=jax.devices()[:1])
  abstract = engine.state_shardings(toy_task(), optimizer, plan, engine.ema_of(config.train))
  with checkpoint.Checkpointer(workdir / "checkpoints") as ckpt:
    return jax.device_get(ckpt.restore_latest_intact(engine.with_shardings(*abstract))[0])


def assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def steps_on_disk(workdir):
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def test_the_toy_task_learns(tmp_path):
  config = toy_config(steps=150, checkpoint_every=0, log_every=50)
  config.optim.lr = 0.1
  state = run(config, tmp_path)
  np.testing.assert_allclose(np.asarray(state.params["w"]), W_TRUE, atol=0.05)


def test_sigint_saves_and_resumes_exactly(tmp_path):
  """A real SIGINT (Ctrl-C) during step 3: the loop saves step 3, raises Preempted with exit
  status 130, and the resumed run ends bit-identical to an uninterrupted one."""
  config = toy_config(steps=6)
  straight = run(config, tmp_path / "straight")
  ctrl_c = engine.Periodic("ctrl-c", 3, lambda step, state: os.kill(os.getpid(), signal.SIGINT),
                           at_end=False)
  with pytest.raises(engine.Preempted) as stopped:
    run(config, tmp_path / "resumed", hooks=[ctrl_c])
  # The hook runs after step 3's save decision; the signal is seen at step 4's boundary.
  assert stopped.value.exit_status == 130 and stopped.value.step == 4
  assert steps_on_disk(tmp_path / "resumed")[-1] == 4
  run(config, tmp_path / "resumed")
  assert_same(jax.device_get(straight), full_state(tmp_path / "resumed", config))
  rows = [json.loads(l) for l in (tmp_path / "resumed" / "metrics.jsonl").open()]
  assert [r["step"] for r in rows if "loss" in r] == list(range(1, 7))
  assert [r["step"] for r in rows if "goodput/wall_s" in r] == [4, 6]  # each call's summary


def test_checkpoint_every_zero_saves_only_the_end(tmp_path):
  run(toy_config(steps=5, checkpoint_every=0), tmp_path)
  assert steps_on_disk(tmp_path) == [5]


def test_a_save_cut_short_by_a_kill_is_cleared_and_the_steps_stay(tmp_path):
  run(toy_config(steps=4), tmp_path)
  leftover = tmp_path / "checkpoints" / "5.orbax-checkpoint-tmp"  # as a SIGKILL mid-save leaves
  (leftover / "state").mkdir(parents=True)
  (leftover / "state" / "data").write_bytes(b"partial")
  run(toy_config(steps=6), tmp_path)
  assert not leftover.exists() and steps_on_disk(tmp_path) == [2, 4, 6]


def test_keep_checkpoints_zero_is_refused_and_deletes_nothing(tmp_path):
  run(toy_config(steps=4), tmp_path)
  with pytest.raises(ValueError, match="train.keep_checkpoints=0 must be >= 1"):
    run(toy_config(steps=8, keep_checkpoints=0), tmp_path)
  assert steps_on_disk(tmp_path) == [2, 4]


@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_a_non_finite_step_is_never_saved(tmp_path, value):
  with pytest.raises(engine.DivergenceError, match="step 3 is not finite"):
    run(toy_config(steps=6), tmp_path, data=toy_data(poison_step=3, value=value))
  assert steps_on_disk(tmp_path) == [2]
  state = full_state(tmp_path, toy_config())
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state))


def test_lr_huge_diverges_and_the_kept_checkpoint_is_sane(tmp_path):
  """The issue's repro (lr=1e6, no clipping) on a loss that overflows float32 (cosh): the run
  stops at the first overflowing step and every kept checkpoint is finite."""
  def cosh_loss(params, batch, rng):
    return jnp.mean(jnp.cosh(batch["image"] @ params["w"] - batch["y"])), {}
  task = dataclasses.replace(toy_task(), loss=cosh_loss)
  config = toy_config(steps=40, checkpoint_every=1)
  config.optim.lr = 1e6
  plan = parallel.ShardingPlan.create(dict(data=1), devices=jax.devices()[:1])
  # (lr is 0 at step 1, the first of the warmup)
  with pytest.raises(engine.DivergenceError, match="step 3 is not finite"):
    engine.run(task, engine.Run(config=config, workdir=tmp_path, data=toy_data(), plan=plan))
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").open()]
  kept = steps_on_disk(tmp_path)[-1]
  assert np.isfinite(rows[kept - 1]["loss"]) and np.isfinite(rows[kept - 1]["grad_norm"])
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(full_state(tmp_path, config)))


def test_loss_spike_guard_stops_before_saving(tmp_path):
  config = toy_config(steps=10, spike_factor=5.0, spike_window=3)
  with pytest.raises(engine.DivergenceError, match="spike_factor=5.0"):
    run(config, tmp_path, data=toy_data(poison_step=6, value=1e3))
  assert steps_on_disk(tmp_path) == [2, 4]
  run(toy_config(steps=10, spike_factor=0.0), tmp_path / "off",
      data=toy_data(poison_step=6, value=1e3))  # off: the same data trains through


def _damage(step_dir, kind):
  state = step_dir / "state"
  if kind == "metadata":
    (state / "_METADATA").unlink()
  elif kind == "manifest":
    (state / "manifest.ocdbt").unlink()
  else:  # truncate every data file
    for f in (state / "d").rglob("*"):
      if f.is_file():
        f.write_bytes(f.read_bytes()[:7])


@pytest.mark.parametrize("kind", ["metadata", "manifest", "data"])
def test_damaged_newest_checkpoint_falls_back_and_resumes_exactly(tmp_path, kind, capsys):
  config = toy_config(steps=6)
  straight = run(config, tmp_path / "straight")
  run(toy_config(steps=4), tmp_path / "run")
  run(toy_config(steps=6), tmp_path / "run")  # steps 2, 4, 6 on disk
  _damage(tmp_path / "run" / "checkpoints" / "6", kind)
  capsys.readouterr()
  # sampling-side read of the EMA only: the damaged step is skipped (or, where the damage does
  # not touch what it reads, read correctly), and nothing is moved
  abstract = {"ema_params": engine.abstract_params(toy_task(), parallel.ShardingPlan.create(
      dict(data=1), devices=jax.devices()[:1]))}
  step, tree = checkpoint.restore_params(tmp_path / "run" / "checkpoints", abstract,
                                         report=print)
  if step == 6:
    assert_same(jax.device_get(straight.ema_params), jax.device_get(tree["ema_params"]))
  else:
    assert step == 4 and "restored step 4, skipped damaged step 6" in capsys.readouterr().out
  assert steps_on_disk(tmp_path / "run") == [2, 4, 6]
  # training-side: falls back, moves step 6 aside (kept), retrains it identically
  run(config, tmp_path / "run")
  out = capsys.readouterr().out
  assert "restored step 4, skipped damaged step 6" in out and "checkpoints-damaged" in out
  assert [p.name.split("-")[0] for p in (tmp_path / "run" / "checkpoints-damaged").iterdir()] \
      == ["6"]
  assert_same(jax.device_get(straight), full_state(tmp_path / "run", config))


def test_no_intact_checkpoint_is_a_clear_error(tmp_path):
  run(toy_config(steps=2), tmp_path)
  _damage(tmp_path / "checkpoints" / "2", "metadata")
  with pytest.raises(checkpoint.CheckpointError, match="(?s)step 2: .*start a new --workdir"):
    run(toy_config(steps=4), tmp_path)
  assert steps_on_disk(tmp_path) == [2]  # nothing moved when nothing restores


def test_restore_params_reads_a_named_step(tmp_path):
  """A learning curve from kept checkpoints: step 2 of a 4-step run is a 2-step run's EMA."""
  short = run(toy_config(steps=2), tmp_path / "short")
  run(toy_config(steps=4), tmp_path / "run")
  abstract = {"ema_params": engine.abstract_params(toy_task(), parallel.ShardingPlan.create(
      dict(data=1), devices=jax.devices()[:1]))}
  step, tree = checkpoint.restore_params(tmp_path / "run" / "checkpoints", abstract, step=2)
  assert step == 2
  assert_same(jax.device_get(short.ema_params), jax.device_get(tree["ema_params"]))
  with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 3 .*kept: \[2, 4\]"):
    checkpoint.restore_params(tmp_path / "run" / "checkpoints", abstract, step=3)


def test_refused_resume_leaves_config_and_checkpoints_untouched(tmp_path):
  run(toy_config(steps=4), tmp_path)
  recorded = (tmp_path / "config.json").read_bytes()
  for field, value in (("optim.grad_clip", 1.0), ("objective.t_dist", "uniform"),
                       ("train.ema_decay", 0.9)):
    config = toy_config(steps=6)
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=f"{field}: .* -> {value!r}"):
      run(config, tmp_path)
    assert (tmp_path / "config.json").read_bytes() == recorded
  assert steps_on_disk(tmp_path) == [2, 4]
  # fields that may change on resume do not block it, and are then recorded
  run(toy_config(steps=6, log_every=3), tmp_path)
  assert json.loads((tmp_path / "config.json").read_text())["train"]["log_every"] == 3


def test_steps_not_above_the_restored_step_train_nothing(tmp_path, capsys):
  run(toy_config(steps=4), tmp_path)
  before = (tmp_path / "metrics.jsonl").read_text()
  capsys.readouterr()
  state = run(toy_config(steps=4), tmp_path)
  assert int(state.step) == 4 and (tmp_path / "metrics.jsonl").read_text() == before
  assert "nothing to train: the run is at step 4 and train.steps=4" in capsys.readouterr().out


def test_workdir_lock_names_the_holder_and_takes_over_stale_locks(tmp_path, capsys):
  import socket
  lock = tmp_path / "lock"
  lock.write_text(json.dumps(dict(host=socket.gethostname(), pid=os.getppid(),
                                  started="2026-01-01 00:00:00")))
  with pytest.raises(WorkdirLockedError, match=f"process {os.getppid()} on host"):
    run(toy_config(steps=2), tmp_path)
  assert not (tmp_path / "checkpoints").exists() or steps_on_disk(tmp_path) == []
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  lock.write_text(json.dumps(dict(host=socket.gethostname(), pid=dead.pid, started="x")))
  capsys.readouterr()
  assert int(run(toy_config(steps=2), tmp_path).step) == 2  # stale: taken over, and said so
  assert (f"{lock} is held by process {dead.pid} on this host, which is gone (killed, or its "
          "machine restarted): taking it over") in capsys.readouterr().out
  assert not lock.exists()  # released at the end


def test_ema_warmup_decay_closed_form():
  ema = engine.EMA(decay=0.999, warmup=True)
  steps = jnp.array([0, 1, 10, 100, 10_000])
  np.testing.assert_allclose(ema.decay_at(steps),
                             np.minimum(0.999, (1 + np.array(steps)) / (10 + np.array(steps))),
                             rtol=1e-6)
  assert float(engine.EMA(0.9).decay_at(jnp.int32(0))) == pytest.approx(0.9)


def test_profile_traces_the_requested_steps(tmp_path):
  run(toy_config(steps=4, profile_start=1, profile_steps=2), tmp_path)
  traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0


def test_evaluator_hooks_are_logged_when_due(tmp_path):
  seen = []

  def evaluate(step, state):
    seen.append(step)
    return {"w_norm": float(jnp.linalg.norm(state.ema_params["w"]))}
  run(toy_config(steps=5), tmp_path, hooks=[engine.Periodic("norm", 2, evaluate)])
  assert seen == [2, 4, 5]  # every 2 steps and at the end
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").open()]
  assert [r["step"] for r in rows if "w_norm" in r] == [2, 4, 5]


def test_one_cadence_rule_for_hooks_logs_and_checkpoints():
  """`is_due`: every `every` steps (0: never) and at the last step unless at_end is off; a
  Periodic hook asks the same rule, and adds its listed `at_steps`."""
  due = [s for s in range(1, 8) if engine.is_due(s, 3, 7)]
  assert due == [3, 6, 7]
  assert [s for s in range(1, 8) if engine.is_due(s, 0, 7)] == [7]
  assert [s for s in range(1, 8) if engine.is_due(s, 3, 7, at_end=False)] == [3, 6]
  hook = engine.Periodic("h", 3, lambda step, state: None, at_end=False)
  assert [s for s in range(1, 8) if hook.due(s, 7)] == [3, 6]
  listed = engine.Periodic("h", 0, lambda step, state: None, at_steps=(2, 5))
  assert [s for s in range(1, 8) if listed.due(s, 7)] == [2, 5, 7]  # and at the end
  both = engine.Periodic("h", 3, lambda step, state: None, at_end=False, at_steps=(1, 3))
  assert [s for s in range(1, 8) if both.due(s, 7)] == [1, 3, 6]


def test_init_params_are_the_state_parameters_without_the_optimizer():
  config = toy_config()
  plan = parallel.ShardingPlan.create(dict(data=-1))
  optimizer, _ = engine.make_optimizer(config.optim, config.train.steps)
  params = engine.init_params(toy_task(), jax.random.PRNGKey(3), plan)
  state = engine.init_state(toy_task(), optimizer, jax.random.PRNGKey(3), plan)
  assert_same(params, state.params)
  assert params["w"].sharding == state.params["w"].sharding


def test_a_restarted_run_loads_its_step_from_the_compilation_cache(tmp_path):
  """The resumed run compiles nothing: its train step comes from <workdir>/compilation_cache
  (a cache hit, no new entry), where the first run wrote it; with the cache off ('') the
  same resume finds nothing. JAX's own setting is back after each run."""
  counts = {}
  for name, cache in (("cached", None), ("uncached", "")):
    for steps in (2, 4):  # a run, then its resume: the same step program
      with CompileCounter() as counted:
        run(toy_config(steps, compilation_cache_dir=cache,
                       compilation_cache_min_compile_s=0.0), tmp_path / name)
      counts[name, steps] = (counted.hits, counted.writes)
      assert jax.config.jax_compilation_cache_dir is None
  entries = [p.name for p in (tmp_path / "cached" / "compilation_cache").iterdir()]
  assert counts["cached", 2][0] == 0 and any(e.startswith("jit_train_step") for e in entries)
  assert counts["cached", 4][0] >= 1 and counts["cached", 4][1] == 0
  assert counts["uncached", 2] == counts["uncached", 4] == (0, 0)
  assert not (tmp_path / "uncached" / "compilation_cache").exists()


def test_each_log_row_carries_the_goodput_and_the_run_ends_with_its_summary(tmp_path):
  """Shares of step, data, checkpoint, hooks and compile sum to 1 in every training row and
  in the summary row; the summary also holds the wall clock and the time to the first step.
  The toy task declares no flops, so no TFLOP/s; a CPU has no known peak, so no MFU."""
  hook = engine.Periodic("noop", 2, lambda step, state: None)
  run(toy_config(steps=4), tmp_path, hooks=[hook])
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").open()]
  shares = [{k: v for k, v in r.items() if k.startswith("goodput/") and not k.endswith("_s")}
            for r in rows if "loss" in r or "goodput/wall_s" in r]
  assert len(shares) == 5 and all(set(s) == {f"goodput/{p}" for p in PHASES} for s in shares)
  assert all(sum(s.values()) == pytest.approx(1.0, abs=1e-9) for s in shares)
  summary = rows[-1]
  assert summary["step"] == 4 and 0 < summary["goodput/first_step_s"] < summary["goodput/wall_s"]
  assert summary["goodput/compile"] > 0  # the first run of the step compiled it
  assert not any("mfu" in r or "tflops_per_device" in r for r in rows)
