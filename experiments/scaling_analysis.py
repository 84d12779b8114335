"""The DiT paper's scaling claims, checked on a finished `configs/sweeps/scaling.py` sweep.

    dit-jax sweep --config configs/sweeps/scaling.py --workdir runs/sweeps/scaling
    python experiments/scaling_analysis.py --sweep-dir runs/sweeps/scaling \
        --out experiments/results/sweeps/scaling

Reads the sweep's results.jsonl (runs named SIZE/PATCH) and writes analysis.md:
  1. at fixed model size, does a smaller patch (more Gflops) give a lower final FD?
  2. across all models, does final FD follow forward Gflops more than parameters (Spearman
     rank correlations, and the models of similar Gflops but different parameters)?
  3. at equal training compute, is the larger of two neighbouring sizes better (FD
     interpolated in log compute between each run's evaluations)?
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
  """Each pair of neighbouring sizes at the same patch, at the middle (geometric) of the
  training compute both were evaluated at."""
  sizes = list(dict.fromkeys(size_and_patch(n)[0] for n in runs))
  patches = sorted({size_and_patch(n)[1] for n in runs}, reverse=True)
  lines = ["", "## 3. Equal training compute", "",
           "Neighbouring sizes at one patch size, compared where both runs' evaluations cover "
           "the same training compute (FD interpolated linearly in log compute between "
           "evaluations, mean over seeds).", "",
           "| patch | smaller | larger | at Tflops | FD smaller | FD larger | larger wins |",
           "|---|---|---|---|---|---|---|"]
  for patch in patches:
    for small, large in zip(sizes, sizes[1:], strict=False):
      a, b = runs[f"{small}/{patch}"]["curve"], runs[f"{large}/{patch}"]["curve"]
      low, high = max(a[0][0], b[0][0]), min(a[-1][0], b[-1][0])
      if low > high:
        lines.append(f"| {patch} | {small} | {large} | no overlap | | | |")
        continue
      at = float(np.sqrt(low * high))
      fa, fb = fd_at(a, at), fd_at(b, at)
      lines.append(f"| {patch} | {small} | {large} | {at:.3g} | {fa:.2f} | {fb:.2f} | "
                   f"{'yes' if fb < fa else 'no'} |")
  return lines


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
