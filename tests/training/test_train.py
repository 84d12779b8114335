import functools
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax import cli, data, engine, flow
from dit_jax.config import base_config
from dit_jax.engine import checkpoint
from dit_jax.models import contract, create_model
from dit_jax.sampling import runs
from dit_jax.training import denoiser


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds"))
  data.prepare("digits/8", path)
  return path


def tiny_config(data_dir, steps=8, **train):
  config = base_config()
  config.model.update(name="DiT", patch_size=2, hidden_size=32, depth=1, num_heads=2,
                      num_classes=10)
  config.data.update(name="digits/8", data_dir=data_dir, batch_size=16)
  config.optim.update(lr=2e-3, warmup_steps=2)
  config.train.update(**{**dict(steps=steps, log_every=2, checkpoint_every=4, sample_every=0,
                               ema_decay=0.9), **train})
  config.sample.update(method="euler", steps=4)
  return config


@functools.cache
def _compiled_pieces():
  """Model, optimizer, schedule, objective of tiny_config, with its init and step compiled
  once per process for the tests that step it by hand."""
  config = tiny_config(data_dir=None)
  model = create_model(config.model)
  optimizer, schedule = engine.make_optimizer(config.optim, config.train.steps)
  objective = flow.make_objective(config.objective)
  init = jax.jit(lambda rng: engine.create_state(denoiser.denoiser_task(model, None, (8, 8, 1)), optimizer, rng, ema=engine.EMA(0.9)))
  return model, optimizer, schedule, objective, init, engine.make_step_fn(denoiser.denoiser_task(model, objective, None), schedule)


def pieces():
  """(model, objective, a fresh train state, the step function) of tiny_config."""
  model, _, _, objective, init, step_fn = _compiled_pieces()
  return model, objective, init(jax.random.PRNGKey(0)), step_fn


def random_batch(seed=0):
  rng = np.random.default_rng(seed)
  return {"image": jnp.asarray(rng.uniform(-1, 1, (16, 8, 8, 1)), jnp.float32),
          "label": jnp.asarray(rng.integers(0, 10, 16), jnp.int32)}


def test_one_step_updates_params_and_ema():
  _, _, state, step_fn = pieces()
  before = jax.device_get(state)
  state, metrics = step_fn(state, random_batch())
  assert int(state.step) == 1 and np.isfinite(float(metrics["loss"]))
  assert float(metrics["lr"]) == 0.0  # warmup starts at 0
  state, metrics = step_fn(state, random_batch(1))
  assert float(metrics["lr"]) == pytest.approx(1e-3)
  after = jax.device_get(state)
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, b),
                                         before.params, after.params))
  assert any(changed)
  assert step_fn._cache_size() == 1  # no recompilation across steps
  middle = jax.device_get(step_fn(state, random_batch(2))[0])  # ema <- 0.9 ema + 0.1 params
  for ema_new, ema_old, p in zip(jax.tree.leaves(middle.ema_params),
                                 jax.tree.leaves(after.ema_params), jax.tree.leaves(middle.params)):
    np.testing.assert_allclose(ema_new, 0.9 * ema_old + 0.1 * p, rtol=1e-6, atol=1e-7)


def test_weight_decay_mask_skips_biases_and_norms():
  mask = engine.decay_mask({"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2),
                           "table": jnp.ones((3, 2)), "scale": jnp.ones(2)})
  assert mask == {"kernel": True, "bias": False, "table": True, "scale": False}


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
  _, _, state, step_fn = pieces()
  state, _ = step_fn(state, random_batch())
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt")
  ckpt.save(1, state, {"position": 7})
  ckpt.wait()
  restored, data_state = ckpt.restore(checkpoint.abstract_like(state))
  ckpt.close()
  assert data_state == {"position": 7}
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))


def _params(workdir):
  """The whole train state of a run's newest checkpoint (params, EMA, optimizer, key)."""
  config, _ = runs.load_run(workdir)
  model = create_model(config.model)
  optimizer, _ = engine.make_optimizer(config.optim, config.train.steps)
  abstract = engine.state_shardings(denoiser.denoiser_task(model, None, (8, 8, 1)), optimizer, runs.single_device_plan(), engine.ema_of(config.train))
  with checkpoint.Checkpointer(workdir / "checkpoints") as ckpt:
    return jax.device_get(ckpt.restore(engine.with_shardings(*abstract))[0])


def test_interrupted_and_resumed_equals_uninterrupted(data_dir, tmp_path, monkeypatch):
  config = tiny_config(data_dir, steps=8)
  denoiser.train_and_evaluate(config, tmp_path / "straight")

  calls = {"n": 0}

  def sigterm_at_step_3(self):
    calls["n"] += 1
    return signal.SIGTERM if calls["n"] == 3 else None
  with monkeypatch.context() as m:
    m.setattr(engine.StopSignals, "requested", sigterm_at_step_3)
    with pytest.raises(engine.Preempted) as stopped:
      denoiser.train_and_evaluate(config, tmp_path / "resumed")
  assert stopped.value.step == 3 and stopped.value.exit_status == 128 + signal.SIGTERM
  assert int(stopped.value.state.step) == 3  # saved at the interruption, not every 4 steps
  assert checkpoint.Checkpointer(tmp_path / "resumed" / "checkpoints").latest_step() == 3
  denoiser.train_and_evaluate(config, tmp_path / "resumed")

  straight, resumed = _params(tmp_path / "straight"), _params(tmp_path / "resumed")
  assert int(resumed.step) == 8
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  steps = [json.loads(l)["step"] for l in (tmp_path / "resumed" / "metrics.jsonl").open()]
  assert steps == sorted(steps) and steps[-1] == 8


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_set_the_guard(signum):
  guard = engine.StopSignals()
  try:
    assert guard.requested() is None
    os.kill(os.getpid(), signum)
    assert guard.requested() == signum
  finally:
    guard.restore()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
  real = data.make_iterator

  class Poisoned:
    def __init__(self, *args, **kwargs):
      self.it, self.n = real(*args, **kwargs), 0

    def __next__(self):
      self.n += 1
      batch = next(self.it)
      return dict(batch, image=batch["image"] * np.nan) if self.n == 6 else batch

    def get_state(self):
      return self.it.get_state()

    def set_state(self, state):
      self.it.set_state(state)

  monkeypatch.setattr(data, "make_iterator", Poisoned)
  with pytest.raises(FloatingPointError, match="step 6 is not finite"):
    denoiser.train_and_evaluate(tiny_config(data_dir, steps=8), tmp_path)
  config, state = runs.load_run(tmp_path)
  assert int(state.step) == 4
  assert all(np.isfinite(np.asarray(l)).all() for l in jax.tree.leaves(state.params))


def test_loss_decreases_and_outputs_are_written(data_dir, tmp_path):
  config = tiny_config(data_dir, steps=60, log_every=10, checkpoint_every=30, sample_every=60)
  config.model.update(hidden_size=64, depth=2, num_heads=4)
  denoiser.train_and_evaluate(config, tmp_path)
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").open()]
  rows = [r for r in rows if "loss" in r]  # training rows (not the evaluator's or the summary)
  assert rows[-1]["loss"] < 0.8 * rows[0]["loss"]
  assert {"grad_norm", "lr", "images_per_s", "steps_per_s", "tflops_per_device"} <= set(rows[0])
  flops = denoiser.train_step_flops(create_model(config.model), (8, 8, 1), 16)
  for row in rows:  # TFLOP/s per device of the row's steps/s; no MFU: a CPU's peak is unknown
    assert row["tflops_per_device"] == pytest.approx(
        flops * row["steps_per_s"] / jax.device_count() / 1e12, rel=1e-6)
    assert "mfu" not in row
  assert (tmp_path / "samples" / "step_0000060.png").exists() and (tmp_path / "loss.png").exists()
  assert any((tmp_path / "tensorboard").iterdir())

  cli.main(["sample", "--workdir", str(tmp_path), "--labels", "3,1,4", "--out",
            str(tmp_path / "s.npz"), "--batch-size", "2"])
  saved = np.load(tmp_path / "s.npz")
  assert saved["arr_0"].shape == (3, 8, 8, 1) and saved["arr_0"].dtype == np.uint8
  np.testing.assert_array_equal(saved["labels"], [3, 1, 4])


@pytest.mark.parametrize("override,message", [
    ("optim.schedule=linear", "optim.schedule='linear'"),
    ("optim.lr=0.0", "optim.lr=0.0 must be positive"),
    ("objective.kind=score", "objective.kind='score'"),
    ("sample.method=rk4", "sample.method='rk4'"),
    ("data.batch_size=0", "data.batch_size=0"),
    ("data.latent_downsample=8", "data.latent_downsample > 1 needs config.data.latents"),
    ("mesh.data=3", "do not divide the 8 devices"),
    ("mesh.rules=zero", "mesh.rules='zero' is not a preset"),
    ("model.num_classes=5", "model.num_classes=5 but data.name='digits/8' has 10 classes .*"
                            "set --config.model.num_classes=10"),
])
def test_bad_values_name_the_field(data_dir, tmp_path, override, message):
  argv = ["train", "--config", "configs/quickstart.py", "--workdir", str(tmp_path),
          f"--config.data.data_dir={data_dir}", f"--config.{override}"]
  with pytest.raises(SystemExit, match=message.replace("(", r"\(")) as stop:
    cli.main(argv)
  assert stop.value.code == 2


def test_a_failed_start_does_not_pin_the_config(data_dir, tmp_path):
  bad = tiny_config(data_dir, steps=2)
  bad.optim.lr = 0.0
  with pytest.raises(ValueError, match="optim.lr"):
    denoiser.train_and_evaluate(bad, tmp_path)
  good = tiny_config(data_dir, steps=2)
  good.model.hidden_size = 64
  assert int(denoiser.train_and_evaluate(good, tmp_path).step) == 2


def test_resume_with_another_model_is_refused(data_dir, tmp_path):
  denoiser.train_and_evaluate(tiny_config(data_dir, steps=2), tmp_path)
  config = tiny_config(data_dir, steps=2)
  config.model.hidden_size = 64
  with pytest.raises(ValueError, match="model.hidden_size: 32 -> 64"):
    denoiser.train_and_evaluate(config, tmp_path)


def test_refused_resume_keeps_the_run_sampleable(data_dir, tmp_path):
  """The issue's repro: rerunning a finished run with another optimizer structure or objective
  used to rewrite config.json first and brick `sample`. Now it is refused, naming the field,
  and the run samples as before (sampling reads only the EMA parameters)."""
  config = tiny_config(data_dir, steps=2)
  denoiser.train_and_evaluate(config, tmp_path)
  recorded = (tmp_path / "config.json").read_bytes()
  for field, value, message in (("optim", "grad_clip", "optim.grad_clip: 1.0 -> 0.0"),
                                ("objective", "kind", "objective.kind: 'flow' -> 'ddpm'")):
    changed = tiny_config(data_dir, steps=4)
    changed[field][value] = 0.0 if value == "grad_clip" else "ddpm"
    with pytest.raises(ValueError, match=message):
      denoiser.train_and_evaluate(changed, tmp_path)
    assert (tmp_path / "config.json").read_bytes() == recorded
  cli.main(["sample", "--workdir", str(tmp_path), "--labels", "1,2", "--out",
            str(tmp_path / "s.npz")])
  assert np.load(tmp_path / "s.npz")["arr_0"].shape == (2, 8, 8, 1)


def test_cli_exit_status_after_sigterm_and_nothing_to_train(data_dir, tmp_path, monkeypatch,
                                                            capsys):
  argv = ["train", "--config", "configs/quickstart.py", "--workdir", str(tmp_path),
          f"--config.data.data_dir={data_dir}", "--config.model.depth=1",
          "--config.model.hidden_size=16", "--config.model.num_heads=2",
          "--config.train.sample_every=0", "--config.data.batch_size=8",
          "--config.evals.samples.every=0"]
  with monkeypatch.context() as m:
    m.setattr(engine.StopSignals, "requested", lambda self: signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
      cli.main(argv + ["--config.train.steps=3"])
  assert stopped.value.code == 128 + signal.SIGTERM
  assert "SIGTERM: saved step 1 and stopped" in capsys.readouterr().err
  cli.main(argv + ["--config.train.steps=1"])
  out = capsys.readouterr().out
  assert "nothing was trained" in out and "at step 1 and train.steps=1" in out
  assert "samples" not in out


def test_a_converted_dit_fine_tunes_through_the_engine(data_dir, tmp_path):
  """train.init_from: a published-layout DiT (time input = DDPM step, declared by the model)
  starts a run; the first step has lr 0 (warm-up), so after it the parameters are exactly the
  converted ones. A config that does not match the checkpoint is refused by field."""
  import flax.linen as nn

  from dit_jax.convert.dit import model_fields, save_converted
  info = dict(patch_size=2, hidden_size=32, depth=1, num_heads=2, mlp_ratio=4.0,
              num_classes=10, learn_sigma=False, time_input="ddpm_step")
  model = create_model(dict(name="DiT", **model_fields(info)))
  params = jax.device_get(nn.unbox(model.init(
      jax.random.PRNGKey(3), *contract.example_inputs(model, (8, 8, 1), 1, abstract=False))["params"]))
  save_converted(tmp_path / "ckpt", params, info)
  config = tiny_config(data_dir, steps=1)
  config.model.update(**model_fields(info))
  config.train.init_from = str(tmp_path / "ckpt")
  state = denoiser.train_and_evaluate(config, tmp_path / "run")
  for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(params),
                  strict=True):
    np.testing.assert_array_equal(a, b)
  config.model.time_input = "unit"
  with pytest.raises(ValueError, match="model.time_input: 'unit' here, 'ddpm_step' there"):
    denoiser.train_and_evaluate(config, tmp_path / "other")
