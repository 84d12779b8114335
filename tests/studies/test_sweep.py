"""Sweeps: expanding a sweep file, the runner (skip finished, extend, retry failed, refuse a
changed sweep), the report (rows, training compute, bootstrap intervals) and side-by-side
workers."""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import numpy as np
import pytest

from dit_jax import cli, paths, state_files
from dit_jax.config import ConfigError, load_config
from dit_jax.engine.run_log import read_history
from dit_jax.studies import sweep, sweep_report, sweep_run
from dit_jax.training import denoiser

TINY = """
from dit_jax.config import base_config, evaluator_section

def get_config(arg=""):
  config = base_config()
  config.model.update(name="DiT", patch_size=2, hidden_size=16, depth=1, num_heads=2,
                      num_classes=10, learn_sigma=False)
  config.data.update(name="digits/8", batch_size=16)
  config.train.update(steps=4, log_every=2, checkpoint_every=2, sample_every=0)
  config.sample.update(method="euler", steps=2)
  config.evals.samples = evaluator_section("samples", every=2, num_samples=20,
                                        batch_size=20)
  return config

def get_sweep(arg=""):
  return dict(title="tiny", {sweep}, metrics=("eval/fd", "eval/accuracy", "loss"))
"""


def sweep_file(tmp_path, sweep_fields: str, name="tiny.py"):
  path = tmp_path / name
  path.write_text(textwrap.dedent(TINY).replace("{sweep}", sweep_fields))
  return str(path)


def test_expansion_names_crosses_and_seeds_every_run(tmp_path):
  path = sweep_file(tmp_path, 'runs={"a": {"model.depth": 2}, "b": {}}, '
                              'axes={"model.conditioning": ["adaln_zero", "adaln"], '
                              '"optim.lr": [1e-3]}, seeds=[3, 4]')
  base, spec = sweep.load(path, ["train.steps=7"])
  runs = sweep.expand(spec, tmp_path / "w")
  assert len(runs) == 2 * 2 * 1 * 2
  assert [r.name for r in runs[::2]] == [
      "a conditioning=adaln_zero lr=0.001", "a conditioning=adaln lr=0.001",
      "b conditioning=adaln_zero lr=0.001", "b conditioning=adaln lr=0.001"]
  assert [r.seed for r in runs[:2]] == [3, 4]
  assert len({r.workdir for r in runs}) == len(runs)
  config = sweep.run_config(base, runs[3])
  assert (config.model.depth, config.model.conditioning, config.seed, config.data.seed,
          config.train.steps) == (2, "adaln", 4, 4, 7)
  assert base.model.depth == 1 and base.seed == 0  # the base is not modified
  # `dit-jax sweep --seeds 4`: a subset of the sweep's seeds, the same run directories
  subset = sweep.expand(sweep.with_seeds(spec, (4,)), tmp_path / "w")
  assert subset == [r for r in runs if r.seed == 4]
  with pytest.raises(ConfigError, match=r"--seeds: \[5\] not among the sweep's seeds \[3, 4\]"):
    sweep.with_seeds(spec, (4, 5))
  # `dit-jax sweep --runs b`: one named set, still crossed with the axes and seeds
  only_b = sweep.expand(sweep.with_runs(spec, ("b",)), tmp_path / "w")
  assert only_b == [r for r in runs if r.name.startswith("b ")] and len(only_b) == 4
  with pytest.raises(ConfigError, match=r"--runs: \['c'\] not among the sweep's named runs "
                                        r"\['a', 'b'\]"):
    sweep.with_runs(spec, ("b", "c"))

  for fields, match in [
      ('runs={"x": {"model.depthh": 2}}', r"sweep run 'x': 'model.depthh': .*no field"),
      ('runs={"x": {"model.depth": "deep"}}', r"sweep run 'x'.*model.depth"),
      ('runs={"x": {"model.depth": 0}}', r"sweep run 'x'.*model.depth=0"),
      ('runs={"a/b": {}, "a-b": {}}', "share the directory 'a-b'"),
      ('axes={"model.depth": []}', r"axes\['model.depth'\] must be a non-empty list"),
      ('seeds=[1, 1]', "must be distinct integers"),
      ('seed=[1]', "unknown keys"),
  ]:
    with pytest.raises(ConfigError, match=match):
      base, spec = sweep.load(sweep_file(tmp_path, fields, "bad.py"))
      [sweep.run_config(base, r) for r in sweep.expand(spec, tmp_path)]
  (tmp_path / "plain.py").write_text("def get_config(arg=''):\n  return None\n")
  with pytest.raises(SystemExit, match="a sweep file needs get_sweep"):
    cli.main(["sweep", "--config", str(tmp_path / "plain.py"), "--workdir", str(tmp_path)])


SWEEPS = Path(__file__).resolve().parents[2] / "configs" / "sweeps"


@pytest.mark.parametrize("name", sorted(
    [p.name for p in SWEEPS.glob("*.py")]
    + [f"{p.name}:{variant}" for p in SWEEPS.glob("*.py") for variant in ("gpu", "long")
       if f'"{variant}"' in p.read_text()]))
def test_every_sweep_file_expands_to_valid_runs(name, tmp_path):
  base, spec = sweep.load(str(SWEEPS / name))
  runs = sweep.expand(spec, tmp_path)
  configs = [sweep.run_config(base, r) for r in runs]  # each validated
  assert len({r.workdir for r in runs}) == len(runs) == len(configs)


def test_migrated_sweeps_train_the_models_of_their_config_files(tmp_path):
  """The studies moved onto the runner train what their config files define."""
  def models(sweep_file):
    base, spec = sweep.load(str(SWEEPS / sweep_file))
    return {r.name: sweep.run_config(base, r).model for r in sweep.expand(spec, tmp_path)}
  configs = SWEEPS.parent
  for name, model in models("posenc.py").items():
    assert model == load_config(f"{configs / 'posenc.py'}:{name}").model, name
  unet = models("unet_vs_dit.py")
  assert unet.pop("DiT") == load_config(str(configs / "quickstart.py")).model
  for name, model in unet.items():
    assert model == load_config(f"{configs / 'unet.py'}:{name.split()[-1]}").model, name
  for name, model in models("mmdit_composition.py").items():
    assert model == load_config(f"{configs / 'mmdit.py'}:{name}").model, name


def test_bootstrap_interval_against_exact_and_normal_theory():
  assert sweep_report.bootstrap_interval([2.5]) == (2.5, 2.5, 2.5)
  # Three seeds: every resample is one of 27 equally likely ones; (1, 1, 1) alone has
  # probability 1/27 > 2.5%, so the 95% interval runs from the smallest to the largest value.
  assert sweep_report.bootstrap_interval([1.0, 2.0, 3.0]) == (2.0, 1.0, 3.0)
  values = np.random.default_rng(0).normal(5.0, 2.0, 400)
  mean, low, high = sweep_report.bootstrap_interval(values)
  half = 1.96 * values.std() / np.sqrt(values.size)  # the bootstrap's normal limit
  assert mean == pytest.approx(values.mean())
  assert (high - low) / 2 == pytest.approx(half, rel=0.08)
  assert (mean - low) == pytest.approx(high - mean, rel=0.25)


def test_long_scaling_sweep_evaluates_fd_at_equal_training_compute(tmp_path):
  """scaling.py:long: each run's FD steps are where 3 x Gflops x batch x step reaches a power
  of 2 Tflops (the report's count), so every shared compute value is evaluated exactly."""
  base, spec = sweep.load(str(SWEEPS / "scaling.py:long"))
  assert base.train.steps == 2400 and base.evals.samples.every == 0
  reached = {}
  for run in sweep.expand(spec, tmp_path)[::2]:  # one seed
    config = sweep.run_config(base, run)
    info = sweep.counts(config)
    steps = config.evals.samples.at_steps
    assert steps and all(200 <= s < 2400 for s in steps)
    tflops = [sweep_report.train_tflops(info["gflops"], 64, s) for s in steps]
    for value in tflops:  # within a step's compute of a power of 2
      assert abs(value - 2.0 ** round(np.log2(value))) <= sweep_report.train_tflops(
          info["gflops"], 64, 0.5)
      reached.setdefault(2.0 ** round(np.log2(value)), []).append(run.name)
  assert set(reached[0.125]) == {"S/2", "S/1", "B/4", "B/2", "L/4"}  # three sizes, 1/8 Tflops


def test_compute_matched_steps_and_one_point_per_evaluated_step():
  # 1 Gflop, batch 100: 0.3 Tflops a step
  assert sweep_report.train_tflops(1.0, 100, 10) == pytest.approx(3.0)
  assert sweep_report.compute_matched_steps(1.0, 100, 20, (0.3, 0.6, 1.5, 3.0, 6.0, 9.0),
                                            first=2) == (2, 5, 10)
  run = sweep.RunSpec("r", 0, {}, Path("w"))
  info = dict(gflops=1.0, params=10, batch_size=100)
  history = [dict(step=2, loss=0.5), {"step": 2, "eval/fd": 9.0},
             {"step": 2, "eval/loss_t=0.5": 0.3}, dict(step=4, loss=0.4),
             {"step": 4, "eval/loss_t=0.5": 0.2}]
  rows = sweep_report.run_rows(run, info, history)
  assert [(r["step"], r.get("eval/fd"), r["eval/loss_t=0.5"], r["loss"]) for r in rows] == [
      (2, 9.0, 0.3, 0.5), (4, None, 0.2, 0.4)]  # two evaluators at step 2: one row


def fake_training(calls, fail=()):
  """train.train_and_evaluate stand-in: logs a loss and an FD per run without training."""
  def fake(config, workdir):
    calls.append((workdir, int(config.train.steps)))
    if config.model.hidden_size in fail:
      raise FloatingPointError("diverged")
    lines = [dict(step=s, loss=1.0 / s, steps_per_s=10.0) for s in (2, 4)]
    lines += [{"step": 4, "eval/fd": float(config.model.hidden_size + config.seed)}]
    (Path(workdir) / "config.json").write_text(config.to_json())
    (Path(workdir) / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return types.SimpleNamespace(step=config.train.steps)
  return fake



def test_runner_skips_finished_runs_retries_failed_ones_and_refuses_a_changed_sweep(
    tmp_path, monkeypatch, capsys):
  path = sweep_file(tmp_path, 'runs={"narrow": {}, "wide": {"model.hidden_size": 32}}, '
                              'seeds=[0, 1]')
  work = tmp_path / "w"
  calls = []
  monkeypatch.setattr(denoiser, "train_and_evaluate", fake_training(calls, fail=(32,)))
  with pytest.raises(SystemExit, match="2 runs failed") as stop:
    cli.main(["sweep", "--config", path, "--workdir", str(work)])
  assert stop.value.code == 1 and len(calls) == 4
  wide = work / "runs" / "wide" / "seed_0"
  assert "FloatingPointError: diverged" in (wide / "error.txt").read_text()
  assert f"!! wide seed 0 failed (FloatingPointError: diverged); see {wide / 'error.txt'}" in \
      capsys.readouterr().out
  table = (work / "results.md").read_text()
  assert "| wide | not run |" in table and "Not finished (2): wide seed 0, wide seed 1" in table
  # narrow: FD 16 and 17 over the two seeds; the interval of two values spans both
  assert "| 16.50 [16.00, 17.00] |" in table

  calls.clear()
  monkeypatch.setattr(denoiser, "train_and_evaluate", fake_training(calls))
  cli.main(["sweep", "--config", path, "--workdir", str(work)])
  assert sorted(c[0] for c in calls) == [str(work / "runs" / "wide" / f"seed_{s}")
                                         for s in (0, 1)]  # only the failed ones again
  assert not (wide / "error.txt").exists()
  rows = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines()]
  assert [(r["run"], r["seed"], r["eval/fd"]) for r in rows] == [
      ("narrow", 0, 16.0), ("narrow", 1, 17.0), ("wide", 0, 32.0), ("wide", 1, 33.0)]
  result = json.loads((wide / "result.json").read_text())
  for row in rows:  # the DiT paper's training compute: 3 x forward Gflops x batch x steps
    assert row["train_tflops"] == pytest.approx(3 * row["gflops"] * 16 * 4 / 1e3)
    assert row["loss"] == 0.25
  assert rows[2]["gflops"] == result["gflops"] > rows[0]["gflops"]
  assert result["params"] > rows[0]["params"] and result["seconds"] >= 0
  assert (work / "fd.png").stat().st_size > 0 and (work / "accuracy.png").exists() is False

  calls.clear()
  cli.main(["sweep", "--config", path, "--workdir", str(work)])
  assert calls == []  # every run finished: nothing trains
  cli.main(["sweep", "--config", path, "--workdir", str(work), "--config.train.steps=6"])
  assert len(calls) == 4 and {c[1] for c in calls} == {6}  # more steps: every run goes on
  with pytest.raises(SystemExit, match=r"sweep run 'narrow' seed 0: .*optim.lr: 0.001 -> 0.01"):
    cli.main(["sweep", "--config", path, "--workdir", str(work), "--config.optim.lr=0.01"])
  capsys.readouterr()


def test_lower_steps_leave_finished_runs_finished_and_failures_are_said(
    tmp_path, monkeypatch, capsys):
  """Runs past a lowered train.steps are finished, their result.json untouched; the final
  'N runs failed' reaches stderr with exit status 1."""
  path = sweep_file(tmp_path, 'runs={"narrow": {}}, seeds=[0, 1]')
  work, calls = tmp_path / "w", []
  monkeypatch.setattr(denoiser, "train_and_evaluate", fake_training(calls))
  cli.main(["sweep", "--config", path, "--workdir", str(work)])
  result = work / "runs" / "narrow" / "seed_0" / "result.json"
  before = result.read_text()
  capsys.readouterr()
  cli.main(["sweep", "--config", path, "--workdir", str(work), "--config.train.steps=2"])
  assert calls[2:] == [] and result.read_text() == before and json.loads(before)["steps"] == 4
  assert "2 finished, 0 trained, 0 failed" in capsys.readouterr().out
  monkeypatch.setattr(denoiser, "train_and_evaluate", fake_training(calls, fail=(16,)))
  with pytest.raises(SystemExit) as stop:
    cli.main(["sweep", "--config", path, "--workdir", str(work), "--config.train.steps=6"])
  assert stop.value.code == 1
  assert "dit-jax sweep: 2 runs failed (error.txt" in capsys.readouterr().err


def test_a_damaged_result_or_log_of_one_run_blocks_neither_the_others_nor_the_report(
    tmp_path, monkeypatch, capsys):
  path = sweep_file(tmp_path, 'runs={"narrow": {}, "wide": {"model.hidden_size": 32}}, '
                              'seeds=[0]')
  work = tmp_path / "w"
  calls = []
  monkeypatch.setattr(denoiser, "train_and_evaluate", fake_training(calls))
  cli.main(["sweep", "--config", path, "--workdir", str(work)])
  wide, narrow = work / "runs" / "wide" / "seed_0", work / "runs" / "narrow" / "seed_0"
  (wide / "result.json").write_text('{"name": "wi')  # a write cut short by a kill
  with open(narrow / "metrics.jsonl", "a") as f:
    f.write('{"step": 6, "lo')                       # an append cut short
  capsys.readouterr()
  cli.main(["sweep", "--config", path, "--workdir", str(work), "--report"])
  out = capsys.readouterr().out
  assert f"{wide / 'result.json'} (a sweep run's result) is damaged" in out
  assert "counted as unfinished" in out and "dropped a partial last line" in out
  assert "Not finished (1): wide seed 0" in (work / "results.md").read_text()
  calls.clear()
  cli.main(["sweep", "--config", path, "--workdir", str(work)])
  assert [c[0] for c in calls] == [str(wide)]  # only the damaged run trains again
  assert json.loads((wide / "result.json").read_text())["steps"] == 4
  rows = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines()]
  assert [(r["run"], r["eval/fd"]) for r in rows] == [("narrow", 16.0), ("wide", 32.0)]


def test_a_damaged_config_of_one_run_skips_that_run_only(tmp_path, monkeypatch, capsys):
  """A run's config.json that does not parse cannot be checked against the sweep: that run is
  reported and not trained (or, finished, still counts); the others and --report go on."""
  path = sweep_file(tmp_path, 'runs={"narrow": {}, "wide": {"model.hidden_size": 32}}, '
                              'seeds=[0]')
  work, calls = tmp_path / "w", []
  monkeypatch.setattr(denoiser, "train_and_evaluate", fake_training(calls))
  cli.main(["sweep", "--config", path, "--workdir", str(work)])
  wide, narrow = work / "runs" / "wide" / "seed_0", work / "runs" / "narrow" / "seed_0"
  (wide / "config.json").write_text('{"model": {"na')  # a write cut short by a kill
  capsys.readouterr()
  cli.main(["sweep", "--config", path, "--workdir", str(work)])  # nothing to train
  out = capsys.readouterr().out
  assert f"{wide / 'config.json'} (the run's recorded config) is damaged" in out
  assert "the run is finished: its result counts" in out and "2 finished" in out

  calls.clear()
  with pytest.raises(SystemExit) as stop:
    cli.main(["sweep", "--config", path, "--workdir", str(work), "--config.train.steps=6"])
  captured = capsys.readouterr()
  assert stop.value.code == 1 and "Traceback" not in captured.err
  assert [c[0] for c in calls] == [str(narrow)]  # the other run trained on
  assert "not trained, counted as failed; the other runs go on" in captured.out
  assert "delete it to resume" in (wide / "error.txt").read_text()
  assert "dit-jax sweep: 1 runs failed (error.txt" in captured.err
  assert json.loads((narrow / "result.json").read_text())["steps"] == 6
  assert json.loads((wide / "result.json").read_text())["steps"] == 4  # kept, not lost
  cli.main(["sweep", "--config", path, "--workdir", str(work), "--report"])
  rows = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines()]
  assert [r["run"] for r in rows] == ["narrow", "wide"]

  (wide / "config.json").unlink()  # the fix the message gives: the run resumes
  calls.clear()
  cli.main(["sweep", "--config", path, "--workdir", str(work), "--config.train.steps=6"])
  assert [c[0] for c in calls] == [str(wide)] and not (wide / "error.txt").exists()


def test_a_sweep_trains_evaluates_and_extends_its_runs(digits_net, tmp_path):
  data_dir, _ = digits_net
  path = sweep_file(tmp_path, 'runs={"tiny": {}}, seeds=[0, 1]')
  work = tmp_path / "w"
  args = ["sweep", "--config", path, "--workdir", str(work), f"--config.data.data_dir={data_dir}"]
  cli.main([*args, "--config.train.steps=2"])
  first = read_history(work / "runs" / "tiny" / "seed_0")
  cli.main([*args, "--config.train.steps=4"])  # resumes both runs from their step-2 checkpoint
  history = read_history(work / "runs" / "tiny" / "seed_0")
  assert history[:len(first)] == first
  rows = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines()]
  assert [(r["seed"], r["step"]) for r in rows] == [(0, 2), (0, 4), (1, 2), (1, 4)]
  for row in rows:
    assert row["eval/fd"] > 0 and 0 <= row["eval/accuracy"] <= 1 and np.isfinite(row["loss"])
  assert rows[0]["eval/fd"] != rows[2]["eval/fd"]  # the seeds differ
  info = json.loads((work / "runs" / "tiny" / "seed_1" / "result.json").read_text())
  assert info["steps"] == 4 and info["devices"] == "8 x cpu"


def test_side_by_side_workers_share_out_the_runs(digits_net, tmp_path):
  data_dir, _ = digits_net
  path = sweep_file(tmp_path, 'runs={"narrow": {}, "wide": {"model.hidden_size": 32}}, '
                              'seeds=[0, 1]')
  work = tmp_path / "w"
  cli.main(["sweep", "--config", path, "--workdir", str(work), "--parallel", "2", "--seeds", "0",
            f"--config.data.data_dir={data_dir}", "--config.train.steps=2"])
  assert not list(work.glob("runs/*/seed_1"))  # the workers got --seeds too
  # the summary is of the whole sweep: seed 1 is there, not run yet
  assert "Not finished (2): narrow seed 1, wide seed 1." in (work / "results.md").read_text()
  logs = [(work / "logs" / f"shard_{i}.log").read_text() for i in range(2)]
  for run in ("narrow", "wide"):
    info = json.loads((work / "runs" / run / "seed_0" / "result.json").read_text())
    assert info["devices"] == "1 x cpu" and info["steps"] == 2  # each worker saw one device
    assert sum(f"== {run} seed 0" in log for log in logs) == 1  # claimed by one worker
  rows = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines()]
  assert [r["run"] for r in rows] == ["narrow", "wide"]


def test_side_by_side_workers_share_out_a_sweep_in_a_bucket(digits_net, gcs_bucket, tmp_path,
                                                            monkeypatch):
  """`sweep --workdir gs://... --parallel 2`: each run claimed by one worker (a claim object
  created only if absent), trained into the bucket; the workers' logs (local files while they
  run) copied to WORKDIR/logs; the report there too; no local `gs:` folder."""
  data_dir, _ = digits_net
  path = sweep_file(tmp_path, 'runs={"narrow": {}, "wide": {"model.hidden_size": 32}}, '
                              'seeds=[0]')
  monkeypatch.chdir(tmp_path)
  work = f"{gcs_bucket}/sweep"
  cli.main(["sweep", "--config", path, "--workdir", work, "--parallel", "2",
            f"--config.data.data_dir={data_dir}", "--config.train.steps=2"])
  logs = [state_files.read_bytes(f"{work}/logs/shard_{i}.log").decode() for i in range(2)]
  for run in ("narrow", "wide"):
    assert state_files.read_json(f"{work}/runs/{run}/seed_0/result.json")["steps"] == 2
    assert sum(f"== {run} seed 0" in log for log in logs) == 1  # claimed by one worker
  assert sorted(paths.list_names(f"{work}/claims")) == ["narrow.seed_0", "wide.seed_0"]
  rows = state_files.read_json_lines(f"{work}/results.jsonl")
  assert [r["run"] for r in rows] == ["narrow", "wide"] and rows[0]["eval/fd"] > 0
  assert {"results.md", "fd.png", "loss.png"} <= set(paths.list_names(work))
  assert [p.name for p in tmp_path.iterdir()] == ["tiny.py"]


def _running(pid: int) -> bool:
  """Alive and not a zombie (one that exited but was not reaped is gone for this purpose)."""
  try:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
  except (FileNotFoundError, ProcessLookupError):
    return False


def _wait_for(condition, seconds: float, what: str):
  deadline = time.monotonic() + seconds
  while not condition():
    if time.monotonic() > deadline:
      raise AssertionError(f"{what} within {seconds} s")
    time.sleep(0.5)


def test_sigterm_to_side_by_side_sweep_stops_its_workers_first(digits_net, tmp_path):
  """A SIGTERM to the parent (a scheduler's stop) killed it at once and left its workers,
  re-parented to PID 1, training the rest of the sweep: now it passes the signal on, waits for
  the workers to save and stop, and exits 143 with a message."""
  data_dir, _ = digits_net
  path = sweep_file(tmp_path, 'runs={"narrow": {}, "wide": {"model.hidden_size": 32}}, '
                              'seeds=[0]')
  work, out = tmp_path / "w", tmp_path / "parent.log"
  with open(out, "w") as log:
    parent = subprocess.Popen(
        [sys.executable, "-m", "dit_jax.cli", "sweep", "--config", path, "--workdir", str(work),
         "--parallel", "2", f"--config.data.data_dir={data_dir}", "--config.train.steps=100000"],
        stdout=log, stderr=subprocess.STDOUT)
  workers = []
  try:
    worker_logs = [work / "logs" / f"shard_{i}.log" for i in range(2)]
    _wait_for(lambda: all(p.exists() and "== " in p.read_text() for p in worker_logs), 300,
              "both workers training")
    workers = [int(pid) for pid in re.findall(r"worker \d: pid (\d+)", out.read_text())]
    assert len(workers) == 2 and all(_running(pid) for pid in workers)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=180) == 128 + signal.SIGTERM
    assert not [pid for pid in workers if _running(pid)]  # no orphan
    assert out.read_text().rstrip().endswith(
        "dit-jax sweep: SIGTERM: stopped the 2 sweep workers, which saved their runs; rerun the "
        "same command to resume")
  finally:  # on failure: nothing of this test left running
    for proc_id in [parent.pid, *workers]:
      if _running(proc_id):
        os.kill(proc_id, signal.SIGKILL)
    parent.wait()


def test_run_sweep_reports_fails_and_stops_on_a_signal(tmp_path, monkeypatch, capsys):
  """sweep_run.run_sweep, the library call of `dit-jax sweep`: the summary it returns is the
  one on disk, failed runs raise RunFailedError after the summary, --report trains nothing,
  and a signal (engine.Preempted) stops the sweep with the CLI's 128 + signal status."""
  import signal

  from dit_jax.engine import Preempted
  from dit_jax.errors import RunFailedError
  path = sweep_file(tmp_path, 'runs={"narrow": {}, "wide": {"model.hidden_size": 32}}, '
                              'seeds=[0, 1]')
  work, calls, lines = tmp_path / "w", [], []
  monkeypatch.setattr(denoiser, "train_and_evaluate", fake_training(calls, fail=(32,)))
  with pytest.raises(RunFailedError, match="2 runs failed"):
    sweep_run.run_sweep(path, work, log=lines.append)
  assert lines[0] == f"sweep 'tiny': 4 runs (2 settings x 2 seeds) in {work}"
  assert "0 finished, 2 trained, 2 failed" in lines and len(calls) == 4
  assert (work / "results.md").read_text() in lines  # the table is printed as written

  calls.clear()
  paths = sweep_run.run_sweep(path, work, report_only=True, log=lines.append)
  assert calls == [] and paths["finished"] == 2 and paths["table"] == work / "results.md"
  assert sweep_run.run_sweep(path, work, seeds=(1,), shard=(0, 2), report_only=True,
                             log=lines.append) is None  # a worker shard leaves the summary

  def preempted(config, workdir):
    raise Preempted(3, signal.SIGTERM)
  monkeypatch.setattr(denoiser, "train_and_evaluate", preempted)
  with pytest.raises(Preempted):
    sweep_run.run_sweep(path, work, log=lines.append)
  with pytest.raises(SystemExit) as stop:
    cli.main(["sweep", "--config", path, "--workdir", str(work)])
  assert stop.value.code == 128 + signal.SIGTERM
  assert capsys.readouterr().err.endswith("dit-jax sweep: SIGTERM: saved step 3 and stopped; "
                                          "rerun the same command to resume\n")


def test_side_by_side_workers_get_the_same_sweep():
  """The worker command line parses back to the parent's sweep, overrides and seeds."""
  argv = sweep_run.worker_argv("s.py", "w", ["train.steps=2"], (0, 2))
  assert argv == ["--config", "s.py", "--workdir", "w", "--config.train.steps=2", "--seeds",
                  "0,2"]
  assert sweep_run.worker_argv("s.py", "w", [], None) == ["--config", "s.py", "--workdir", "w"]
  assert sweep_run.worker_argv("s.py", "w", [], None, ("S/4", "B/2"))[-2:] == ["--runs",
                                                                               "S/4,B/2"]
  args = cli.build_parser().parse_args(["sweep", "--config", "s.py", "--workdir", "w",
                                        "--runs", "S/4, B/2"])
  assert args.runs == ("S/4", "B/2")
