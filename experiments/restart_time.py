"""Restart-to-first-step with and without the persistent compilation cache (issue 32): a
resumed `dit-jax train` of the quickstart and of a DiT-B/2, and a 2-seed sweep.

    python experiments/restart_time.py --data-dir /tmp/tfds --trials 3 [--cases quickstart,b2]
    python experiments/restart_time.py --data-dir /tmp/tfds --trials 3 --cases sweep

A restart case trains 1 step (a checkpoint, and with the cache its entries), then times the
restart: a new `dit-jax train` process resuming to step 2. The sweep case runs this file as a
sweep (`get_config` / `get_sweep` below: the quickstart model, 2 steps, seeds 0 and 1, one
process, back to back). Cache on is the default (`<workdir>/compilation_cache`, the sweep's
`<sweep>/compilation_cache`), off is `--config.train.compilation_cache_dir=''`; the two
alternate within each trial (on, off, on, off, ...). Reported per run, from its goodput
summary: `first_step_s` (from `engine.run`'s start to the first step done: restore, compile,
one step), `compile_s` (all compilation of the run: compile share x wall clock) and the
process's wall seconds (`process_s`: imports and data set-up included). Prints a JSON line per
run and the medians.

DiT-B/2 here is the preset (depth 12, width 768, 12 heads, patch 2, scanned blocks) on 32x32
digits: 256 tokens, as at 256 px through the SD VAE; float32 (a CPU has no fast bf16) and
batch 1, so that on a CPU the step's compute does not swamp its compilation, as it does not on
an accelerator.
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dit_jax.config import base_config, model_section

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--config.train.sample_every=0", "--config.evals.samples.every=0",
         "--config.train.log_every=1", "--config.train.checkpoint_every=1",
         "--config.data.num_threads=1"]
CASES = {
    "quickstart": ["--config", str(ROOT / "configs" / "quickstart.py"), *QUIET],
    "b2": ["--config", str(ROOT / "configs" / "dit.py") + ":DiT-B/2", *QUIET[:1], *QUIET[2:],
           "--config.data.name=digits/32", "--config.data.image_size=32",
           "--config.data.latent_downsample=1", "--config.data.batch_size=1",
           "--config.model.num_classes=10", "--config.model.dtype=float32"],
}
OFF = "--config.train.compilation_cache_dir="


def get_config(arg: str = ""):
  """The sweep's runs: the quickstart's DiT, 2 steps, no samples or evaluations."""
  del arg
  config = base_config()
  config.model = model_section("DiT", patch_size=1, hidden_size=64, depth=4, num_heads=4,
                               num_classes=10, learn_sigma=False)
  config.data.update(name="digits/8", batch_size=64, num_threads=1)
  config.train.update(steps=2, log_every=1, checkpoint_every=2, sample_every=0)
  return config


def get_sweep(arg: str = ""):
  del arg
  return dict(title="compilation cache: 2 seeds", seeds=[0, 1], metrics=("loss",))


def summary(workdir: Path) -> dict:
  """first_step_s and compile_s of the run's last goodput summary."""
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
  row = [r for r in rows if "goodput/first_step_s" in r][-1]
  return dict(first_step_s=row["goodput/first_step_s"],
              compile_s=row["goodput/compile"] * row["goodput/wall_s"])


def cli(args: list[str]) -> float:
  start = time.perf_counter()
  done = subprocess.run([sys.executable, "-m", "dit_jax.cli", *args], capture_output=True,
                        text=True)
  if done.returncode:
    raise RuntimeError(f"dit-jax {' '.join(args)} failed:\n{done.stderr[-3000:]}")
  return time.perf_counter() - start


def restart(case: str, cached: bool, data_dir: str) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    workdir = Path(tmp) / "run"
    args = ["train", *CASES[case], "--workdir", str(workdir),
            f"--config.data.data_dir={data_dir}", *([] if cached else [OFF])]
    cli(args + ["--config.train.steps=1"])
    seconds = cli(args + ["--config.train.steps=2"])
    return dict(case=case, cached=cached, **summary(workdir), process_s=seconds)


def sweep(cached: bool, data_dir: str) -> list[dict]:
  with tempfile.TemporaryDirectory() as tmp:
    args = ["sweep", "--config", __file__, "--workdir", tmp,
            f"--config.data.data_dir={data_dir}", *([] if cached else [OFF])]
    seconds = cli(args)
    rows = []
    for seed in (0, 1):
      rows.append(dict(case=f"sweep seed {seed}", cached=cached,
                       **summary(Path(tmp) / "runs" / "base" / f"seed_{seed}"),
                       process_s=seconds))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data-dir", required=True, help="a TFDS data dir (digits are "
                      "prepared there if missing)")
  parser.add_argument("--trials", type=int, default=3)
  parser.add_argument("--cases", default="quickstart,b2,sweep")
  args = parser.parse_args()
  from dit_jax import data
  for name in ("digits/8", "digits/32"):
    data.prepare(name, args.data_dir)
  results = []
  for _ in range(args.trials):
    for case in args.cases.split(","):
      for cached in (True, False):
        got = sweep(cached, args.data_dir) if case == "sweep" else [
            restart(case, cached, args.data_dir)]
        for row in got:
          print(json.dumps(row), flush=True)
        results += got
  groups = {}
  for r in results:
    groups.setdefault((r["case"], r["cached"]), []).append(r)
  for (case, cached), rows in groups.items():
    print(json.dumps(dict(case=case, cached=cached, runs=len(rows), **{
        key: round(statistics.median(r[key] for r in rows), 2)
        for key in ("first_step_s", "compile_s", "process_s")})))


if __name__ == "__main__":
  main()
