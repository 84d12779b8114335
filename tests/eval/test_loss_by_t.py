"""Loss by noise level: closed forms on Gaussian data, fixed noise, batching and devices, the
evaluator's logged keys (EMA and raw) during training, `dit-jax eval-loss`, and its config.

Gaussian data x1 ~ N(mu, s^2) in every dimension and noise x0 ~ N(0, 1) make (x1, x0, x_t)
jointly Gaussian for x_t = a x1 + b x0, V = Var x_t = a^2 s^2 + b^2. For a target
y = p x1 + q x0, E[y | x_t] = p mu + (p a s^2 + q b) / V (x_t - a mu), and the least possible
squared error is Var[y | x_t] = p^2 s^2 + q^2 - (p a s^2 + q b)^2 / V. Flow matching (a = t,
b = 1 - t, y = x1 - x0) gives s^2 / V; DDPM's eps (a = sqrt(abar), b = sqrt(1 - abar), y = x0)
gives a^2 s^2 / V. A model that outputs E[y | x_t] must score exactly that at each t.
"""
import json

import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax import cli, data, parallel
from dit_jax.config import ConfigError, base_config, evaluator_section, validate
from dit_jax.engine.run_log import read_history
from dit_jax.eval import loss_by_t
from dit_jax.flow.objectives import DDPM, FlowMatching
from dit_jax.training import denoiser

MU, S = 1.5, 0.3
TIMES = (0.05, 0.2, 0.5, 0.8, 0.95)


def gaussian_batch(n=4096, seed=0, shape=(4, 4, 1)) -> loss_by_t.HeldOut:
  """n examples of 16 values each (65,536 squared errors a time: ~0.6% Monte Carlo error)."""
  rng = np.random.default_rng(seed)
  x1 = rng.normal(MU, S, (n, *shape)).astype(np.float32)
  return loss_by_t.HeldOut(x1, rng.standard_normal(x1.shape, dtype=np.float32), None)


def expand(t_B, x):
  return jnp.asarray(t_B, jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1))


def flow_velocity(params, x, t_B, cond):
  """E[x1 - x0 | x_t] on the linear path, written from the formula above."""
  t = expand(t_B, x)
  V = t ** 2 * S ** 2 + (1 - t) ** 2
  return MU + (t * S ** 2 - (1 - t)) / V * (x - t * MU)


def abar_at(t_B):
  """DDPM's linear-beta abar (N = 1000) at the step nearest to model time t."""
  abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
  n = np.clip(np.round(1000 * (1 - np.asarray(t_B, np.float64)) - 1), 0, 999).astype(int)
  return abar[n]


def ddpm_eps(params, x, t_B, cond):
  """E[x0 | x_n] at the step the model's t stands for (t = 1 - (n + 1) / N)."""
  n = jnp.round(1000 * (1 - t_B) - 1).astype(jnp.int32)
  abar = jnp.asarray(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)), jnp.float32)[n]
  a, b = expand(jnp.sqrt(abar), x), expand(jnp.sqrt(1 - abar), x)
  return b / (a ** 2 * S ** 2 + b ** 2) * (x - a * MU)


def test_exact_velocity_scores_the_irreducible_loss_at_each_t():
  batch = gaussian_batch()
  losses = loss_by_t.LossByT(FlowMatching(), flow_velocity, batch, TIMES, batch_size=1024)
  got = losses(None)
  t = np.asarray(TIMES)
  closed_form = S ** 2 / (t ** 2 * S ** 2 + (1 - t) ** 2)
  np.testing.assert_allclose([got[x] for x in TIMES], closed_form, rtol=0.02)
  # the same draw in numpy: the number is exactly the batch mean of the squared error
  for time in TIMES:
    x_t = (1 - time) * batch.noise + time * batch.x1
    v = np.asarray(flow_velocity(None, x_t, np.full(len(x_t), time), None))
    assert got[time] == pytest.approx(np.mean((v - (batch.x1 - batch.noise)) ** 2), rel=1e-5)
  # a model off by 0.3 everywhere scores 0.3^2 more at every t: the check can fail
  off = loss_by_t.LossByT(FlowMatching(), lambda p, x, t, c: flow_velocity(p, x, t, c) + 0.3,
                          batch, TIMES, batch_size=1024)(None)
  np.testing.assert_allclose([off[x] - got[x] for x in TIMES], 0.09, atol=0.01)


def test_ddpm_is_scored_at_the_nearest_step_of_its_chain():
  batch = gaussian_batch()
  got = loss_by_t.LossByT(DDPM(), ddpm_eps, batch, TIMES, batch_size=4096)(None)
  abar = abar_at(TIMES)
  closed_form = abar * S ** 2 / (abar * S ** 2 + 1 - abar)
  np.testing.assert_allclose([got[x] for x in TIMES], closed_form, rtol=0.02)
  assert got[0.05] < 0.01 < 0.5 < got[0.95]  # eps is hard to tell near the data end


def test_fixed_noise_same_numbers_any_batching_and_devices():
  batch = gaussian_batch(n=100)
  one = loss_by_t.LossByT(FlowMatching(), flow_velocity, batch, (0.3, 0.7), batch_size=100)
  first = one(None)
  assert one(None) == first  # the same batch and noise at every call
  plan = parallel.ShardingPlan.create(dict(data=-1))  # 8 devices: 12 -> 16, last batch padded
  sharded = loss_by_t.LossByT(FlowMatching(), flow_velocity, batch, (0.3, 0.7), batch_size=12,
                              plan=plan)
  assert sharded.batch_size == 16
  for t, value in sharded(None).items():
    assert value == pytest.approx(first[t], rel=1e-6)
  other_noise = gaussian_batch(n=100)._replace(
      noise=np.random.default_rng(9).standard_normal((100, 4, 4, 1), dtype=np.float32))
  assert loss_by_t.LossByT(FlowMatching(), flow_velocity, other_noise, (0.3, 0.7))(None) != first


def test_metric_names_and_table():
  assert loss_by_t.metric_name(0.5) == "loss_t=0.5"
  assert loss_by_t.metric_name(0.05, raw=True) == "loss_raw_t=0.05"
  assert loss_by_t.named({0.2: 1.0, 0.8: 2.0}, raw=True) == {"loss_raw_t=0.2": 1.0,
                                                             "loss_raw_t=0.8": 2.0}
  rows = [dict(step=4, t=0.2, ema=0.51234567, raw=0.6), dict(step=4, t=0.8, ema=0.1, raw=0.2)]
  table = loss_by_t.format_rows(rows).splitlines()
  assert table[0].split() == ["step", "t", "loss", "(EMA)", "loss", "(raw)"]
  assert table[1].split() == ["4", "0.2", "0.51235", "0.60000"]
  assert json.loads(loss_by_t.format_rows(rows, "json")) == rows


@pytest.mark.parametrize("fields,message", [
    (dict(t_values=(0.5, 1.5)), r"config.evals.lt.t_values=\(0.5, 1.5\) must be a non-empty "
                                r"list of times in \[0, 1\]"),
    (dict(t_values=()), r"t_values=\(\) must be a non-empty list"),
    (dict(at_steps=(100, 0)), r"config.evals.lt.at_steps=\(100, 0\) must be a list of steps"),
    (dict(at_steps=(1.5,)), r"at_steps=\(1.5,\) must be a list of steps"),
    (dict(raw="yes"), r"config.evals.lt.raw='yes' must be true or false"),
])
def test_config_errors_name_the_field(fields, message):
  config = base_config()
  config.evals.lt = evaluator_section("loss_by_t", **fields)
  with pytest.raises(ConfigError, match=message):
    validate(config)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  """A tiny class-conditional DiT trained 4 steps, loss by t logged at steps 2 and 4."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  data.prepare("digits/8", data_dir)
  config = base_config()
  config.model.update(name="DiT", patch_size=2, hidden_size=32, depth=1, num_heads=2,
                      num_classes=10)
  config.data.update(name="digits/8", data_dir=data_dir, batch_size=16)
  config.optim.update(lr=2e-3, warmup_steps=2)
  config.train.update(steps=4, log_every=2, checkpoint_every=2, sample_every=0, ema_decay=0.9)
  config.evals.lt = evaluator_section("loss_by_t", every=0, at_steps=(2,), num_samples=24,
                                      batch_size=16, t_values=(0.2, 0.8))
  workdir = tmp_path_factory.mktemp("run")
  denoiser.train_and_evaluate(validate(config), str(workdir))
  return workdir


def test_evaluator_logs_ema_and_raw_losses_that_the_cli_reproduces(trained_run, tmp_path,
                                                                   capsys):
  logged = [h for h in read_history(trained_run) if "eval/loss_t=0.2" in h]
  assert [h["step"] for h in logged] == [2, 4]  # at_steps and the end
  keys = {"eval/loss_t=0.2", "eval/loss_t=0.8", "eval/loss_raw_t=0.2", "eval/loss_raw_t=0.8"}
  assert set(logged[-1]) == {"step"} | keys
  last = logged[-1]
  assert last["eval/loss_t=0.2"] != last["eval/loss_raw_t=0.2"]  # EMA 0.9 lags the weights
  plot = tmp_path / "loss_by_t.png"
  cli.main(["eval-loss", "--workdir", str(trained_run), "--t", "0.2,0.8", "--num", "24",
            "--batch-size", "16", "--format", "json", "--plot", str(plot)])
  rows = json.loads(capsys.readouterr().out)
  assert [(r["step"], r["t"]) for r in rows] == [(4, 0.2), (4, 0.8)]
  for row in rows:  # one device here, eight in training: the same batch, noise and numbers
    assert row["ema"] == pytest.approx(last[f"eval/loss_t={row['t']:g}"], rel=1e-5)
    assert row["raw"] == pytest.approx(last[f"eval/loss_raw_t={row['t']:g}"], rel=1e-5)
  assert plot.stat().st_size > 0
  earlier = loss_by_t.evaluate_run(trained_run, [2], t_values=(0.2,), num=24, raw=False)
  assert earlier == [dict(step=2, t=0.2, ema=pytest.approx(logged[0]["eval/loss_t=0.2"],
                                                            rel=1e-5))]
