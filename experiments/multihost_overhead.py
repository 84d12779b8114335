"""Steps/s of one training config in 2 processes x 4 CPU devices (gloo), for two code trees:
what a per-step cross-process agreement (a blocking process_allgather after every step) costs
against the stop check without one.

    python experiments/multihost_overhead.py --code before=/path/to/old/tree \
        --code after=. --trials 3

Each trial runs every tree once, interleaved (A B A B ...), so that load on a shared machine
falls on both alike; each run is 2 fresh processes training a small DiT (width 64, depth 2,
patch 2 on 8x8 digits, batch 16, data parallel over the 8 devices) for 200 steps, logging
every 50. Its steps/s is the median of the log rows at steps 100, 150 and 200 (the first row
holds compilation). Prints one JSON line per run and the medians and their ratio.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

STEPS, LOG_EVERY = 200, 50


def worker(port: str, index: str, data_dir: str, workdir: str):
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  from dit_jax import parallel
  parallel.initialize_distributed(f"localhost:{port}", 2, int(index))
  from dit_jax.config import base_config
  from dit_jax.training import denoiser
  config = base_config()
  config.model.update(name="DiT", patch_size=2, hidden_size=64, depth=2, num_heads=4,
                      num_classes=10)
  config.data.update(name="digits/8", data_dir=data_dir, batch_size=16, num_threads=1)
  config.train.update(steps=STEPS, log_every=LOG_EVERY, checkpoint_every=0, sample_every=0)
  config.mesh.update(data=8, rules="dp")
  denoiser.train_and_evaluate(config, workdir)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def one_run(code: str, data_dir: str) -> float:
  """Steps/s of one 2-process run of the tree at `code`."""
  with tempfile.TemporaryDirectory() as workdir:
    port = str(free_port())
    env = dict(os.environ, PYTHONPATH=str(Path(code).resolve()))
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", port, str(i), data_dir,
                               workdir], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=1200)[0] for p in procs]
    for p, out in zip(procs, outputs):
      if p.returncode:
        raise RuntimeError(f"worker failed ({p.returncode}):\n{out[-3000:]}")
    rows = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").open()]
  rates = [r["steps_per_s"] for r in rows if "loss" in r and r["step"] > LOG_EVERY]
  return statistics.median(rates)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--code", action="append", required=True,
                      help="NAME=TREE: a checkout of dit_jax to time (give two or more)")
  parser.add_argument("--trials", type=int, default=3)
  parser.add_argument("--data-dir", help="prepared TFDS digits (default: a temporary one)")
  args = parser.parse_args()
  trees = dict(item.split("=", 1) for item in args.code)
  from dit_jax import data
  data_dir = args.data_dir or tempfile.mkdtemp(prefix="tfds")
  data.prepare("digits/8", data_dir)
  rates = {name: [] for name in trees}
  for trial in range(args.trials):
    for name, code in trees.items():
      rate = one_run(code, data_dir)
      rates[name].append(rate)
      print(json.dumps(dict(trial=trial, code=name, steps_per_s=rate)), flush=True)
  medians = {name: statistics.median(r) for name, r in rates.items()}
  names = list(trees)
  print(json.dumps(dict(median_steps_per_s=medians,
                        ratio=f"{names[-1]}/{names[0]} = {medians[names[-1]] / medians[names[0]]:.3f}")))


if __name__ == "__main__":
  if sys.argv[1:2] == ["--worker"]:
    worker(*sys.argv[2:])
  else:
    main()
