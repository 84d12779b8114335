"""The DiT paper's scaling claims, checked on a finished `configs/sweeps/scaling.py` sweep.

    dit-jax sweep --config configs/sweeps/scaling.py --workdir runs/sweeps/scaling
    python experiments/scaling_analysis.py --sweep-dir runs/sweeps/scaling \
        --out experiments/results/sweeps/scaling

Reads the sweep's results.jsonl (runs named SIZE/PATCH) and writes analysis.md:
  1. at fixed model size, does a smaller patch (more Gflops) give a lower final FD?
  2. across all models, does final FD follow forward Gflops more than parameters (Spearman
     rank correlations, and the models of similar Gflops but different parameters)?
  3. at equal training compute, are larger models better (FD interpolated in log compute
     between each run's evaluations)?
"""
import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

METRIC = "eval/fd"


def load(path: Path) -> dict[str, dict]:
  """{run: {'gflops', 'params', 'curve': [(train_tflops, mean FD over seeds)], 'final',
  'seeds'}} from results.jsonl."""
  rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  runs = {}
  for row in rows:
    r = runs.setdefault(row["run"], dict(gflops=row["gflops"], params=row["params"], at={}))
    r["at"].setdefault(row["step"], []).append((row["train_tflops"], row[METRIC]))
  for r in runs.values():
    steps = sorted(r["at"])
    r["curve"] = [(np.mean([c for c, _ in r["at"][s]]), np.mean([f for _, f in r["at"][s]]))
                  for s in steps]
    r["final"] = r["curve"][-1][1]
    r["seeds"] = len(r["at"][steps[-1]])
  return runs


def size_and_patch(name: str) -> tuple[str, int]:
  size, _, patch = name.partition("/")
  return size, int(patch)


def fd_at(curve, tflops: float) -> float:
  """FD at a training compute inside the run's evaluations, linear in log compute; NaN
  outside."""
  x = np.log([c for c, _ in curve])
  if not x[0] <= np.log(tflops) <= x[-1]:
    return float("nan")
  return float(np.interp(np.log(tflops), x, [f for _, f in curve]))


def patch_section(runs) -> list[str]:
  sizes = list(dict.fromkeys(size_and_patch(n)[0] for n in runs))
  patches = sorted({size_and_patch(n)[1] for n in runs}, reverse=True)
  lines = ["## 1. Smaller patches at a fixed model size", "",
           "| size | " + " | ".join(f"patch {p}" for p in patches) + " | smaller patch wins |",
           "|---|" + "---|" * (len(patches) + 1)]
  for size in sizes:
    group = sorted(((size_and_patch(n)[1], r) for n, r in runs.items()
                    if size_and_patch(n)[0] == size), key=lambda x: -x[0])
    fds = [r["final"] for _, r in group]
    monotone = all(b < a for a, b in zip(fds, fds[1:], strict=False))
    cells = [f"{r['final']:.2f} ({r['gflops'] * 1e3:.2f} Mflops)" for _, r in group]
    lines.append(f"| {size} | " + " | ".join(cells) + f" | {'yes' if monotone else 'no'} |")
  return lines


def gflops_section(runs) -> list[str]:
  names = list(runs)
  fd = [runs[n]["final"] for n in names]
  rho_g = spearmanr([runs[n]["gflops"] for n in names], fd).statistic
  rho_p = spearmanr([runs[n]["params"] for n in names], fd).statistic
  lines = ["", "## 2. Gflops or parameters", "",
           f"Spearman rank correlation of final FD over the {len(names)} models: with forward "
           f"Gflops {rho_g:+.2f}, with parameters {rho_p:+.2f} (-1: more is always better).",
           "", "| model | forward Mflops | params (K) | final FD |", "|---|---|---|---|"]
  for n in sorted(names, key=lambda n: runs[n]["gflops"]):
    r = runs[n]
    lines.append(f"| {n} | {r['gflops'] * 1e3:.2f} | {r['params'] / 1e3:.0f} | "
                 f"{r['final']:.2f} |")
  return lines


def compute_section(runs) -> list[str]:
  """FD of each model at the training computes where at least two sizes were evaluated."""
  points = sorted({c for r in runs.values() for c, _ in r["curve"]})
  shared = [c for c in points
            if len({size_and_patch(n)[0] for n, r in runs.items()
                    if not np.isnan(fd_at(r["curve"], c))}) >= 2]
  picks = shared[::max(1, len(shared) // 5)][:6]
  lines = ["", "## 3. Equal training compute", "",
           "FD interpolated (linear in log compute) between each run's evaluations; '-' where a "
           "run was not trained that far or started later.", "",
           "| model | " + " | ".join(f"{c:.3g} Tflops" for c in picks) + " |",
           "|---|" + "---|" * len(picks)]
  for n in sorted(runs, key=lambda n: (size_and_patch(n)[0], -size_and_patch(n)[1])):
    cells = [fd_at(runs[n]["curve"], c) for c in picks]
    lines.append(f"| {n} | " + " | ".join("-" if np.isnan(v) else f"{v:.2f}" for v in cells)
                 + " |")
  best = []
  for c in picks:
    at = {n: fd_at(r["curve"], c) for n, r in runs.items()}
    at = {n: v for n, v in at.items() if not np.isnan(v)}
    winner = min(at, key=at.get)
    best.append(f"{c:.3g} Tflops: {winner} ({at[winner]:.2f})")
  return lines + ["", "Best model at each compute: " + "; ".join(best) + "."]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sweep-dir", required=True, type=Path)
  parser.add_argument("--out", required=True, type=Path)
  args = parser.parse_args()
  runs = load(args.sweep_dir / "results.jsonl")
  seeds = min(r["seeds"] for r in runs.values())
  text = "\n".join([
      "# Scaling claims of the DiT paper, checked", "",
      f"From {args.sweep_dir / 'results.jsonl'}: final FD is the mean over {seeds} seeds of the "
      "last evaluation (see results.md for the intervals).", "",
      *patch_section(runs), *gflops_section(runs), *compute_section(runs), ""])
  args.out.mkdir(parents=True, exist_ok=True)
  (args.out / "analysis.md").write_text(text)
  print(text)


if __name__ == "__main__":
  main()
