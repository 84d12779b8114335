"""A run's small files through `dit-jax train`: damaged state files are named with their fix
(or, for an append-only log's cut-short last line, dropped with a warning); the workdir lock
is taken over atomically and never left empty; a full disk is an I/O error (exit 1)."""
import json

import pytest

from dit_jax import cli, paths
from dit_jax.engine.run_log import read_history

TINY_RUN = ["--config", "configs/quickstart.py", "--config.train.steps=2",
            "--config.model.depth=1", "--config.model.hidden_size=16",
            "--config.model.num_heads=2", "--config.train.sample_every=0",
            "--config.data.batch_size=8", "--config.evals.samples.every=0"]


def train(workdir, *flags):
  cli.main(["train", "--workdir", str(workdir), *TINY_RUN, *flags])


def exit_status(capsys, workdir, *flags) -> tuple[int, str]:
  with pytest.raises(SystemExit) as stop:
    train(workdir, *flags)
  out = capsys.readouterr()
  return stop.value.code, out.out + out.err


def test_a_cut_short_metrics_line_is_dropped_and_a_damaged_config_is_named(tmp_path, capsys):
  workdir = tmp_path / "run"
  train(workdir)
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write('{"step": 3, "loss": 0.')  # what a kill during an append leaves
  capsys.readouterr()
  train(workdir, "--config.train.steps=4")  # resumes past it
  out = capsys.readouterr().out
  assert f"{workdir / 'metrics.jsonl'}: dropped a partial last line" in out
  history = read_history(workdir)
  assert [h["step"] for h in history if "loss" in h][-1] == 4
  assert (workdir / "metrics.jsonl").read_text().endswith("}\n")

  (workdir / "config.json").write_text('{"model": {"na')  # a write cut short
  status, out = exit_status(capsys, workdir, "--config.train.steps=6")
  assert status == 2 and "Traceback" not in out
  assert f"{workdir / 'config.json'} (the run's recorded config) is damaged" in out
  assert "delete it to resume" in out
  (workdir / "config.json").write_text("[1, 2]\n")  # JSON, but not a config
  status, out = exit_status(capsys, workdir, "--config.train.steps=6")
  assert status == 2 and "Traceback" not in out
  assert f"{workdir / 'config.json'} (the run's recorded config) is damaged (a JSON list" in out


RACER = r"""
import os, random, sys, time
from pathlib import Path
from dit_jax.engine import workdir_lock

alive = workdir_lock._alive
def jittered(pid):  # the scheduler may pause a process anywhere: widen the race window
  time.sleep(random.random() * 0.002)
  return alive(pid)
workdir_lock._alive = jittered
meeting, root, trials = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
(meeting / f"ready-{os.getpid()}").touch()
while not (meeting / "go").exists():
  time.sleep(0.005)
start = float((meeting / "go").read_text())
for trial in range(trials):
  time.sleep(max(0.0, start + 0.03 * trial - time.time()))
  error = workdir_lock.WorkdirLock(f"{root}/{trial}")._acquire()
  print(trial, int(error is None), flush=True)
"""


@pytest.mark.parametrize("store", ["local", "gcs"])
def test_two_starts_never_both_take_over_one_stale_lock(tmp_path, request, store):
  """Two processes race for the stale lock of each of many workdirs: exactly one wins each.
  Half the locks name a dead process of this host, half are empty (what an older version left
  on a full disk); no host-wide mutex serialises the starts, as none would across hosts."""
  import os
  import socket
  import subprocess
  import sys
  import time

  from dit_jax import state_files
  trials = 150 if store == "local" else 40
  root = str(tmp_path) if store == "local" else request.getfixturevalue("gcs_bucket")
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  for trial in range(trials):
    state_files.write_atomic(f"{root}/{trial}/lock", "" if trial % 2 else json.dumps(
        dict(host=socket.gethostname(), pid=dead.pid, started="x")))
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  racers = [subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path), root, str(trials)],
                             stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
  deadline = time.time() + 120
  while len(list(tmp_path.glob("ready-*"))) < 2 and time.time() < deadline:
    time.sleep(0.05)
  (tmp_path / "go").write_text(str(time.time() + 0.5))
  outs = [r.communicate(timeout=180)[0] for r in racers]
  assert [r.returncode for r in racers] == [0, 0]
  wins = [0] * trials
  for out in outs:
    for line in out.split("\n"):
      if line.split() and all(w.isdigit() for w in line.split()):  # not a take-over message
        trial, won = map(int, line.split())
        wins[trial] += won
  assert wins == [1] * trials
  for trial in range(trials):  # the winner's lock is whole and names it; no claim is left
    assert state_files.read_json(f"{root}/{trial}/lock")["pid"] in {r.pid for r in racers}
    assert state_files.version(f"{root}/{trial}/lock.takeover-x") is None
  leftover = [p for p in (tmp_path.rglob("lock.takeover-*") if store == "local" else
                          paths.as_path(root).glob("*/lock.takeover-*"))]
  assert leftover == []


def test_a_full_disk_at_start_leaves_no_lock_and_an_empty_lock_is_taken_over(
    tmp_path, capsys, monkeypatch):
  import errno
  import os
  workdir = tmp_path / "run"
  workdir.mkdir()
  write = os.write

  def full_disk(fd, data):  # the disk is full for the lock's content
    if os.readlink(f"/proc/self/fd/{fd}").startswith(str(workdir / ".lock")):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return write(fd, data)
  monkeypatch.setattr(os, "write", full_disk)
  status, out = exit_status(capsys, workdir)
  assert status == 1 and "No space left on device" in out and "Traceback" not in out
  assert sorted(p.name for p in workdir.iterdir() if "lock" in p.name) == []
  monkeypatch.undo()

  (workdir / "lock").write_text("")  # what an older version left on a full disk
  train(workdir)
  out = capsys.readouterr().out
  assert f"{workdir / 'lock'} is empty or unreadable" in out and "taking it over" in out
  assert not (workdir / "lock").exists()
  assert [h["step"] for h in read_history(workdir) if "loss" in h][-1] == 2


@pytest.mark.parametrize("total", [4, 6])  # step 4 is the last save, or one before the last
def test_a_full_disk_during_a_checkpoint_is_one_message_and_exit_1(tmp_path, capfd, caplog,
                                                                   monkeypatch, total):
  """Orbax writes a step in background threads; its failure surfaces once (at the next save
  or at the end), as an I/O error (exit 1) saying the earlier steps are intact, and the rerun
  resumes from them exactly."""
  import errno
  import os

  from etils import epath
  workdir = tmp_path / "run"
  local = type(epath.Path(tmp_path))
  write_text = local.write_text

  def full_disk(self, *args, **kwargs):  # the disk fills while step 4 is written
    if f"{workdir / 'checkpoints' / '4'}" in str(self):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
    return write_text(self, *args, **kwargs)
  monkeypatch.setattr(local, "write_text", full_disk)
  steps = [f"--config.train.steps={total}", "--config.train.checkpoint_every=2",
           "--config.train.log_every=2"]
  with pytest.raises(SystemExit) as stop:
    train(workdir, *steps)
  out = capfd.readouterr()
  output = out.out + out.err
  assert stop.value.code == 1
  assert output.count("No space left on device") == 1 and "Traceback" not in output
  assert "the steps saved before are intact (latest: 2)" in output
  assert not [r for r in caplog.records if r.exc_info]  # Orbax's own tracebacks: not shown
  monkeypatch.undo()
  logged = [h for h in read_history(workdir) if "loss" in h]
  train(workdir, *steps)  # resumes from step 2
  resumed = [h for h in read_history(workdir) if "loss" in h]
  assert [h["step"] for h in resumed] == list(range(2, total + 1, 2))
  assert resumed[1]["loss"] == logged[1]["loss"]  # step 4 again, bit for bit


FULL_DISK_RUN = r"""
import errno, os, sys
from etils import epath
from dit_jax import cli
workdir, flags = sys.argv[1], sys.argv[2:]
local = type(epath.Path(workdir))
write_text = local.write_text
def full_disk(self, *args, **kwargs):  # the disk fills while step 4 is written
  if os.path.join(workdir, "checkpoints", "4") in str(self):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
  return write_text(self, *args, **kwargs)
local.write_text = full_disk
cli.main(["train", "--workdir", workdir, *flags])
"""


def test_a_full_disk_during_a_checkpoint_prints_no_traceback_as_python_exits(tmp_path):
  """A real process, not pytest's (which collects unraisable errors instead of printing
  them): the tensorstore writes Orbax abandons when a save fails finish after its event loop
  closed, and each printed "RuntimeError: Event loop is closed" on stderr."""
  import os
  import subprocess
  import sys
  flags = [*TINY_RUN, "--config.train.steps=4", "--config.train.checkpoint_every=2"]
  done = subprocess.run([sys.executable, "-c", FULL_DISK_RUN, str(tmp_path / "run"), *flags],
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert done.returncode == 1, done.stderr[-3000:]
  assert "Traceback" not in done.stderr and "Event loop is closed" not in done.stderr
  assert done.stderr.count("No space left on device") == 1
  assert "the steps saved before are intact (latest: 2)" in done.stderr


def test_a_damaged_converted_description_is_named_with_the_fix(tmp_path, capsys):
  (tmp_path / "dit.json").write_text('{"model": "Di')  # a write cut short
  (tmp_path / "params.npz").touch()
  with pytest.raises(SystemExit) as stop:
    cli.main(["sample", "--converted", str(tmp_path), "--num", "2",
              "--out", str(tmp_path / "s.npz")])
  err = capsys.readouterr().err
  assert stop.value.code == 2 and "Traceback" not in err
  assert f"{tmp_path / 'dit.json'} (a converted DiT's description) is damaged" in err
  assert "convert the checkpoint again" in err
