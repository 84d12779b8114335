"""FD of a finished sweep's runs from more samples than their training-time evaluations.

    python experiments/final_fd.py --sweep-dir runs/sweeps/scaling_long --num 1000 \
        --out experiments/results/sweeps/scaling

The sweeps score 300 samples while they train, and 300 real digits already score FD 4.55 with
a standard deviation of 0.80 (experiments/fd_floor.py), which ranks no two good models. This
samples `--num` images (uniform labels, the run's own sampler: its config's `sample` section)
from the EMA parameters of every finished run's last checkpoint (`WORKDIR/runs/*/seed_*`, with
a result.json) and scores them as the 'samples' evaluator does: the data set's classifier,
against its test split. At 1,000 samples real digits score 3.82 (sd 0.26). Writes
final_fd.json ({run: {seed: metrics}}) and final_fd.md to --out.
"""
import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

from dit_jax import data, flow
from dit_jax.config import model_input_shape
from dit_jax.eval.classifier import classifier_net
from dit_jax.eval.evaluate import Reference, evaluate
from dit_jax.eval.features import Extractor
from dit_jax.models import contract, create_model
from dit_jax.sampling import runs
from dit_jax.sampling.sampler import ImageSampler, sample_in_batches, uniform_labels
from dit_jax.studies.sweep_report import bootstrap_interval


def finished_runs(sweep_dir: Path) -> dict[str, dict[int, Path]]:
  """{run name ('S/4'): {seed: run directory}} of the runs with a result.json."""
  out = {}
  for result in sorted(sweep_dir.glob("runs/*/seed_*/result.json")):
    name = json.loads(result.read_text())["name"]
    out.setdefault(name, {})[int(result.parent.name[5:])] = result.parent
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sweep-dir", required=True, type=Path)
  parser.add_argument("--num", type=int, default=1000)
  parser.add_argument("--batch-size", type=int, default=500)
  parser.add_argument("--out", required=True, type=Path)
  args = parser.parse_args()

  found = finished_runs(args.sweep_dir)
  if not found:
    raise SystemExit(f"--sweep-dir {args.sweep_dir}: no finished run (runs/*/seed_*/result.json)")
  scores, extractor, reference = {}, None, None
  start = time.perf_counter()
  for name, seeds in found.items():
    for seed, workdir in sorted(seeds.items()):
      config, state = runs.load_run(workdir)
      if extractor is None:  # every run of a sweep trains on one data set
        net = classifier_net(config.data.name, config.data.get("data_dir"))
        extractor = Extractor(net, args.batch_size)
        test, _ = data.read_images(config.data.name, "test", config.data.get("data_dir"))
        reference = Reference.of_features(net, extractor(test))
      model = create_model(config.model)
      sampler = ImageSampler(model, flow.make_objective(config.objective), config.sample,
                             model_input_shape(config.data))
      labels = uniform_labels(args.num, contract.class_count(model), seed=1)
      samples = np.concatenate(list(sample_in_batches(
          sampler, state.ema_params, labels, args.batch_size, jax.random.PRNGKey(seed + 7))))
      scores.setdefault(name, {})[seed] = dict(step=int(state.step),
                                               **evaluate(extractor, samples, reference, labels))
      print(f"{name} seed {seed} step {int(state.step)}: FD {scores[name][seed]['fd']:.3f}",
            flush=True)
  seconds = time.perf_counter() - start

  args.out.mkdir(parents=True, exist_ok=True)
  (args.out / "final_fd.json").write_text(json.dumps(
      dict(sweep=str(args.sweep_dir), num=args.num, scores=scores), indent=2))
  lines = [f"# FD of {args.num} samples at the end of each run", "",
           f"`python experiments/final_fd.py --sweep-dir {args.sweep_dir} --num {args.num}`: "
           f"{args.num} EMA samples per run and seed (uniform labels, each run's own sampler) "
           "scored against the test digits in the data set's classifier features; mean over "
           f"seeds [95% bootstrap interval]. {seconds:.0f} s on 2 CPU cores. What real digits "
           f"score: `experiments/fd_floor.py --data {config.data.name}`.", "",
           "| run | FD | per seed | accuracy | precision | recall |", "|---|---|---|---|---|---|"]
  for name, by_seed in scores.items():
    fd = [s["fd"] for s in by_seed.values()]
    mean, low, high = bootstrap_interval(fd)
    lines.append(f"| {name} | {mean:.2f} [{low:.2f}, {high:.2f}] | "
                 f"{', '.join(f'{v:.2f}' for v in fd)} | "
                 + " | ".join(f"{np.mean([s[k] for s in by_seed.values()]):.3f}"
                              for k in ("accuracy", "precision", "recall")) + " |")
  (args.out / "final_fd.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
