"""Runs that live in a bucket, through `dit-jax`, against the emulator of tests/gcs_emulator.py:
the quickstart model trained into gs://, stopped by SIGTERM and resumed bit-exact, sampled
into the bucket; a second trainer refused by the lock; a bucket lost in the middle of a save
(exit 1, named), then back with its data (the run resumes, nothing saved before is lost);
unknown buckets named. Nothing may land in a local folder called `gs:`."""
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import gcs_emulator
from dit_jax import cli, paths
from dit_jax.engine import run_log
from dit_jax.engine.run_log import read_history
from dit_jax.sampling import runs

QUICKSTART = str(Path(__file__).parents[1] / "configs" / "quickstart.py")  # (tests chdir)
TINY = ["--config", QUICKSTART, "--config.model.depth=1",
        "--config.model.hidden_size=16", "--config.model.num_heads=2",
        "--config.data.batch_size=8", "--config.evals.samples.every=0",
        "--config.train.checkpoint_every=2", "--config.train.log_every=1"]


def train(workdir, steps, *flags):
  cli.main(["train", "--workdir", workdir, *TINY, f"--config.train.steps={steps}", *flags])


def objects(url) -> list[str]:
  """The names under a gs:// prefix, as the bucket lists them."""
  return sorted(p[len(paths.object_name(url)) + 1:]
                for p in paths.filesystem(url).find(paths.object_name(url)))


def assert_no_local_gs_folder(*folders):
  for folder in folders:
    assert not (Path(folder) / "gs:").exists(), f"a local gs: folder in {folder}"


@pytest.fixture
def cwd(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # a relative pathlib.Path("gs://...") would land here
  return tmp_path


def test_sigterm_resume_is_exact_and_samples_land_in_the_bucket(gcs_bucket, cwd, monkeypatch,
                                                                capsys):
  straight, resumed = f"{gcs_bucket}/straight", f"{gcs_bucket}/resumed"
  train(straight, 4, "--config.train.sample_every=4")
  add = run_log.MetricsLog.add

  def sigterm_at_step_2(self, step, metrics):  # a real SIGTERM, as a scheduler sends it
    add(self, step, metrics)
    if step == 2:
      os.kill(os.getpid(), signal.SIGTERM)
  monkeypatch.setattr(run_log.MetricsLog, "add", sigterm_at_step_2)
  with pytest.raises(SystemExit) as stop:
    train(resumed, 4, "--config.train.sample_every=4")
  assert stop.value.code == 128 + signal.SIGTERM
  assert objects(f"{resumed}/checkpoints") and "lock" not in objects(resumed)
  monkeypatch.undo()
  monkeypatch.chdir(cwd)
  train(resumed, 4, "--config.train.sample_every=4")

  _, a = runs.load_run(straight)
  _, b = runs.load_run(resumed)
  for x, y in zip(jax.tree.leaves(a.ema_params), jax.tree.leaves(b.ema_params), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # None lost, none twice (training rows: the goodput summary row shares the last step).
  assert [h["step"] for h in read_history(resumed) if "loss" in h] == [1, 2, 3, 4]
  names = objects(resumed)
  for name in ("config.json", "metrics.jsonl", "loss.png", "samples/step_0000004.png"):
    assert name in names
  assert any(n.startswith("tensorboard/events.out.tfevents") for n in names)
  assert "lock" not in names

  capsys.readouterr()
  cli.main(["sample", "--workdir", resumed, "--per-class", "1",
            "--out", f"{gcs_bucket}/out/grid.png"])
  assert f"to {gcs_bucket}/out/grid.png" in capsys.readouterr().out
  assert paths.as_path(f"{gcs_bucket}/out/grid.png").read_bytes()[:4] == b"\x89PNG"
  assert_no_local_gs_folder(cwd, tempfile.gettempdir(), Path.cwd())


def test_a_second_trainer_is_refused_by_the_lock_in_the_bucket(gcs_bucket, cwd, capsys):
  """A lock held by a live process (this one, as a running trainer would hold it)."""
  import json
  import socket
  workdir = f"{gcs_bucket}/run"
  holder = dict(host=socket.gethostname(), pid=os.getpid(), started="2026-01-01 00:00:00")
  paths.as_path(f"{workdir}/lock").write_text(json.dumps(holder))
  with pytest.raises(SystemExit) as stop:
    train(workdir, 2, "--config.train.sample_every=0")
  err = capsys.readouterr().err
  assert stop.value.code == 2 and "Traceback" not in err
  assert (f"workdir {workdir} is in use by process {os.getpid()} on host "
          f"{socket.gethostname()} (since 2026-01-01 00:00:00)") in err
  assert objects(workdir) == ["lock"]  # nothing written by the refused start
  assert_no_local_gs_folder(cwd)


def test_unknown_buckets_are_named(gcs_server, cwd, capsys):
  for argv in (["train", "--workdir", "gs://no-such-bucket-x/run", *TINY],
               ["sample", "--workdir", "gs://no-such-bucket-x/run", "--out", "s.png"]):
    with pytest.raises(SystemExit) as stop:
      cli.main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert ("argument --workdir: gs://no-such-bucket-x/run: the bucket gs://no-such-bucket-x "
            "or the object does not exist") in err and "create the bucket" in err
  assert_no_local_gs_folder(cwd)


def test_a_lost_bucket_stops_the_run_and_it_resumes_when_back(tmp_path):
  """The emulator (objects on disk) stops in the middle of the run: the trainer stops with one
  named error and exit 1 within the bounded retries. Back with the same data, the rerun
  resumes from the newest intact step and ends with every step's metrics exactly once."""
  server = gcs_emulator.Emulator(gcs_emulator.free_port(), tmp_path / "gcs",
                                 backend="filesystem").start()
  try:
    workdir = f"{server.create_bucket()}/run"
    env = dict(os.environ, **server.environment())
    command = [sys.executable, "-m", "dit_jax.cli", "train", "--workdir", workdir, *TINY,
               "--config.train.steps=12", "--config.train.sample_every=0",
               "--config.train.keep_checkpoints=20"]
    checkpoints = tmp_path / "gcs" / "objects" / paths.bucket(workdir) / "run" / "checkpoints"
    trainer = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, cwd=tmp_path,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not (checkpoints / "4" / "commit_success.txt").exists():
      assert trainer.poll() is None and time.monotonic() < deadline, trainer.stdout.read()
      time.sleep(0.01)
    server.stop()
    stopped = time.monotonic()
    out = trainer.communicate(timeout=300)[0]
    assert trainer.returncode == 1, out
    assert time.monotonic() - stopped < 150  # bounded retries, not minutes per request
    assert "Traceback" not in out and (f"could not save a checkpoint in {workdir}/checkpoints"
                                       in out or "the bucket could not be reached" in out)
    assert "rerun the same command" in out
    saved = sorted(int(p.name) for p in checkpoints.iterdir()
                   if (p / "commit_success.txt").exists())
    assert saved[:2] == [2, 4]

    server.start()  # the same port, the same objects
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300,
                           cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"trained steps {saved[-1]}..12" in rerun.stdout
    for step in saved:  # nothing saved before is lost
      assert (checkpoints / str(step) / "commit_success.txt").exists()
    history = [h["step"] for h in read_history_from(server, workdir) if "loss" in h]
    assert history == list(range(1, 13))
    assert_no_local_gs_folder(tmp_path)
  finally:
    server.stop()


def read_history_from(server, workdir) -> list[dict]:
  """metrics.jsonl as the (file-backed) emulator stores it."""
  import json
  path = server.root / "objects" / paths.bucket(workdir) / "run" / "metrics.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines()]
