"""A real two-process run (2 processes x 4 CPU devices, gloo collectives) equals the same
training in one process on 8 devices, with FSDP spanning both processes."""
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from dit_jax import data, engine, flow, parallel, paths, state_files
from dit_jax.engine import checkpoint
from dit_jax.models import create_model
from dit_jax.sampling import runs
from dit_jax.training import denoiser

WORKER = Path(__file__).parent / "multihost" / "worker.py"
MESH = {"data": 1, "fsdp": 8, "rules": "fsdp"}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def launch(data_dir: str, workdir, cwd=None) -> list[dict]:
  """Trains tests/multihost/worker.py's run in two processes; returns their reports."""
  port = str(free_port())
  procs = [subprocess.Popen([sys.executable, str(WORKER), port, "2", str(i), data_dir,
                             str(workdir), json.dumps(MESH)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  return [json.loads(out.strip().splitlines()[-1]) for out in outputs]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  data.prepare("digits/8", data_dir)
  workdir = tmp_path_factory.mktemp("run")
  return data_dir, workdir, launch(data_dir, workdir)


def test_each_process_holds_its_shards_and_only_process_0_writes(two_process_run):
  _, workdir, reports = two_process_run
  for index, report in enumerate(reports):
    assert report == dict(process=index, devices=8, local_devices=4, step=4,
                          spec="P('fsdp', None)", local_shards=4)
  state_dir = workdir / "checkpoints" / "4" / "state"
  assert {p.name for p in state_dir.glob("ocdbt.process_*")} == {"ocdbt.process_0",
                                                                 "ocdbt.process_1"}
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "loss" in r] == [2, 4]  # written once, by process 0
  assert [r["step"] for r in rows if "goodput/wall_s" in r] == [4]  # the run's summary
  assert (workdir / "samples" / "step_0000004.png").exists()


def test_two_processes_equal_one_process(two_process_run):
  """Rebuild the run in this process: the global batch is process 0's half followed by
  process 1's half, exactly as make_array_from_process_local_data lays it out."""
  _, workdir, _ = two_process_run
  config, _ = runs.load_run(workdir)
  model = create_model(config.model)
  optimizer, schedule = engine.make_optimizer(config.optim, config.train.steps)
  objective = flow.make_objective(config.objective)
  plan = parallel.ShardingPlan.create(MESH)
  ema = engine.ema_of(config.train)
  abstract, shardings = engine.state_shardings(denoiser.denoiser_task(model, None, (8, 8, 1)), optimizer, plan, ema)
  with checkpoint.Checkpointer(workdir / "checkpoints") as ckpt:  # the whole state
    restored, _ = ckpt.restore(engine.with_shardings(abstract, shardings))
  state = engine.init_state(denoiser.denoiser_task(model, None, (8, 8, 1)), optimizer, jax.random.PRNGKey(config.seed), plan, ema)
  step_fn = engine.make_step_fn(denoiser.denoiser_task(model, objective, None), schedule, plan, shardings)
  halves = [data.make_iterator(config.data, process_index=i, process_count=2) for i in (0, 1)]
  for _ in range(config.train.steps):
    parts = [next(it) for it in halves]
    batch = {k: np.concatenate([p[k] for p in parts]) for k in ("image", "label")}
    state, _ = step_fn(state, plan.global_batch(batch))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                                                       atol=1e-6),
               restored.params, state.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                                                       atol=1e-6),
               restored.opt_state, state.opt_state)


def test_two_processes_write_one_checkpoint_into_a_bucket_restored_on_another_mesh(
    two_process_run, gcs_bucket, tmp_path):
  """The same run with its workdir in a bucket: each process uploads its own shards of the
  one checkpoint, process 0 alone the metrics; in this one process the checkpoint restores
  onto another mesh (data parallel over 8 devices) and equals the local run's."""
  data_dir, local, _ = two_process_run
  workdir = f"{gcs_bucket}/run"
  reports = launch(data_dir, workdir, cwd=tmp_path)
  assert [(r["process"], r["step"], r["local_shards"]) for r in reports] == [(0, 4, 4),
                                                                             (1, 4, 4)]
  assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(
      paths.list_names(f"{workdir}/checkpoints/4/state"))
  assert [row["step"] for row in state_files.read_json_lines(f"{workdir}/metrics.jsonl")
          if "loss" in row] == [2, 4]
  other = parallel.ShardingPlan.create({"data": 8, "fsdp": 1})
  (_, remote), (_, here) = runs.load_run(workdir, other), runs.load_run(local, other)
  assert int(remote.step) == 4
  jax.tree.map(np.testing.assert_array_equal, remote.ema_params, here.ema_params)
  kernel = remote.ema_params["blocks_0"]["mlp"]["fc1"]["kernel"]
  assert kernel.sharding.mesh.shape["fsdp"] == 1  # laid out on this mesh, not the writers'
  assert list(tmp_path.iterdir()) == []  # no local gs: folder


@pytest.mark.parametrize("name", ["TERM", "INT"])
def test_a_signal_to_one_process_stops_every_process_at_the_same_step(tmp_path, name):
  """VAE training on 2 processes; only process 1 gets the signal. Both save the same step and
  exit with 128 + signal (without agreement process 0 would wait forever in a collective).
  SIGTERM goes through JAX's preemption service (no collective); SIGINT through the gather
  every train.stop_check_every (10) steps, so it stops at a multiple of 10."""
  data_dir = str(tmp_path / "tfds")
  data.prepare("digits/8", data_dir)
  port = str(free_port())
  worker = Path(__file__).parent / "multihost" / "vae_worker.py"
  procs = [subprocess.Popen([sys.executable, str(worker), port, "2", str(i), data_dir,
                             str(tmp_path / "run"), name],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  signum = signal.Signals[f"SIG{name}"]
  for p, out in zip(procs, outputs):
    assert p.returncode == 128 + signum, out[-3000:]
  steps = [json.loads(out.strip().splitlines()[-1])["step"] for out in outputs]
  assert steps[0] == steps[1] and 0 < steps[0] < 400
  if signum == signal.SIGINT:
    assert steps[0] % 10 == 0
  else:  # JAX's handler took it (a Python one would have silenced JAX's notice)
    assert "SIGTERM caught" in outputs[1]
  saved = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert saved == [steps[0]]
