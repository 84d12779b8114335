"""The DiT paper's scaling claims, checked on a finished `configs/sweeps/scaling.py:long` sweep,
with the training budget at which each one turns.

    dit-jax sweep --config configs/sweeps/scaling.py:long --workdir runs/sweeps/scaling_long
    python experiments/fd_floor.py   # the FD of real digits, the floor FD is read against
    python experiments/final_fd.py --sweep-dir runs/sweeps/scaling_long \
        --out experiments/results/sweeps/scaling
    python experiments/scaling_analysis.py --sweep-dir runs/sweeps/scaling_long \
        --out experiments/results/sweeps/scaling

Reads the sweep's results.jsonl (runs named SIZE/PATCH, one row per run, seed and evaluated
step) and writes analysis.md and loss_by_t.png. Quality is measured two ways:
  - the held-out loss (`eval/loss_t=T`: EMA parameters, the first 128 test digits, fixed
    noise; every 100 steps) averaged over T = 0.05, 0.2, 0.5, 0.8, 0.95, and at each T, which
    shows at which noise levels a claim holds;
  - FD of 300 EMA samples at equal training compute and at the end, next to the FD of 300
    real digits (experiments/results/fd_floor.json), which the models reach; and of 1,000
    samples at the end (experiments/final_fd.py's final_fd.json), with a third of the noise.
The claims, each compared seed by seed (seed s of two runs shares the data order), with the
first evaluated step from which the claim holds at every later evaluation ("holds from"):
  1. at a fixed patch size, the larger model is better (at equal steps);
  2. at a fixed model size, the smaller patch (more Gflops) is better;
  3. quality follows forward Gflops more than parameters (Spearman over the models);
  4. at equal training compute, the larger of two neighbouring sizes is better.
"""
import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from dit_jax.studies.sweep_report import bootstrap_interval

TIMES = (0.05, 0.2, 0.5, 0.8, 0.95)
BY_T = tuple(f"eval/loss_t={t:g}" for t in TIMES)
LOSS, FD = "loss_mean_t", "eval/fd"  # LOSS: the mean of BY_T, added by `load`


def load(path: Path) -> dict[str, dict]:
  """{run: {'gflops', 'params', 'seeds': {seed: {step: row}}}}, the rows of one (run, seed,
  step) merged (each evaluator writes its own)."""
  runs = {}
  for line in path.read_text().splitlines():
    if line.strip():
      row = json.loads(line)
      run = runs.setdefault(row["run"], dict(gflops=row["gflops"], params=row["params"],
                                             seeds={}))
      run["seeds"].setdefault(row["seed"], {}).setdefault(row["step"], {}).update(row)
  for run in runs.values():
    for rows in run["seeds"].values():
      for row in rows.values():
        if all(k in row for k in BY_T):
          row[LOSS] = float(np.mean([row[k] for k in BY_T]))
  return runs


def add_final_fd(runs, path: Path) -> bool:
  """Puts experiments/final_fd.py's FD of more samples at the end into runs[name]['fd_end']
  ({seed: FD}); False when there is no such file."""
  if not path.exists():
    return False
  for name, by_seed in json.loads(path.read_text())["scores"].items():
    if name in runs:
      runs[name]["fd_end"] = {int(seed): s["fd"] for seed, s in by_seed.items()}
  return True


def _fd_end(run: dict, final_fd: bool = True) -> dict[int, float]:
  """{seed: FD at the end}: of experiments/final_fd.py's samples (when `final_fd` and there),
  else of the sweep's last evaluation."""
  if final_fd and "fd_end" in run:
    return run["fd_end"]
  points = curve(run, FD)
  return points[max(points)] if points else {}


def _fd_differences(a: dict, b: dict) -> list[float]:
  """b - a of the FD at the end per shared seed, both from the same number of samples."""
  both = "fd_end" in a and "fd_end" in b
  fa, fb = _fd_end(a, both), _fd_end(b, both)
  return [fb[s] - fa[s] for s in sorted(set(fa) & set(fb))]


def _first_seed_rows(run: dict) -> dict[int, dict]:
  """{step: row} of the run's first seed: what every seed shares (steps, training compute)."""
  return run["seeds"][next(iter(run["seeds"]))]


def size_and_patch(name: str) -> tuple[str, int]:
  size, _, patch = name.partition("/")
  return size, int(patch)


def curve(run: dict, metric: str) -> dict[int, dict[int, float]]:
  """{step: {seed: value}} at the steps where every seed of the run has `metric`."""
  seeds = run["seeds"]
  steps = set.intersection(*({s for s, row in rows.items() if metric in row}
                             for rows in seeds.values()))
  return {s: {seed: seeds[seed][s][metric] for seed in seeds} for s in sorted(steps)}


def paired(a: dict, b: dict, metric: str) -> dict[int, list[float]]:
  """{step: [b - a per shared seed]} at the steps both runs evaluated: negative where b is
  better (lower)."""
  ca, cb = curve(a, metric), curve(b, metric)
  out = {}
  for step in sorted(set(ca) & set(cb)):
    seeds = sorted(set(ca[step]) & set(cb[step]))
    out[step] = [cb[step][s] - ca[step][s] for s in seeds]
  return out


def holds_from(values_by_x: dict) -> object:
  """The first x from which the mean of the values is negative at every later x; None when it
  is not negative at the last one."""
  first = None
  for x in sorted(values_by_x):
    if np.mean(values_by_x[x]) < 0:
      first = x if first is None else first
    else:
      first = None
  return first


def _signed(values) -> str:
  return ", ".join(f"{v:+.3f}" for v in values)


def _interval(values, digits: int = 3) -> str:
  mean, low, high = bootstrap_interval(values)
  return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _final(run: dict, metric: str) -> list[float]:
  points = curve(run, metric)
  return list(points[max(points)].values()) if points else []


def pair_rows(runs, pairs, metric: str) -> list[str]:
  rows = []
  for a, b in pairs:
    diffs = paired(runs[a], runs[b], metric)
    if not diffs:
      continue
    last = max(diffs)
    start = holds_from(diffs)
    fd_last = _fd_differences(runs[a], runs[b])
    by_t = []
    for key in BY_T:
      d = paired(runs[a], runs[b], key)
      t_start = holds_from(d)
      by_t.append(f"no ({np.mean(d[max(d)]):+.3f})" if t_start is None else str(t_start))
    rows.append(
        f"| {a} | {b} | {_interval(_final(runs[a], metric))} | "
        f"{_interval(_final(runs[b], metric))} | {_signed(diffs[last])} | "
        f"{'-' if start is None else start} | " + " | ".join(by_t) + " | "
        f"{_signed(fd_last) if fd_last else '-'} |")
  return rows


PAIR_HEADER = ["| worse by the claim | better by the claim | loss [interval] | loss [interval] | "
               "difference per seed (end) | holds from step | "
               + " | ".join(f"t = {t:g}: from step" for t in TIMES)
               + " | FD difference per seed (end) |",
               "|---|---|---|---|---|---|" + "---|" * len(TIMES) + "---|"]


def size_section(runs) -> list[str]:
  sizes = list(dict.fromkeys(size_and_patch(n)[0] for n in runs))
  patches = sorted({size_and_patch(n)[1] for n in runs}, reverse=True)
  pairs = [(f"{s}/{p}", f"{t}/{p}") for p in patches for s, t in zip(sizes, sizes[1:])
           if f"{s}/{p}" in runs and f"{t}/{p}" in runs]
  return ["## 1. Larger models at a fixed patch size (equal steps)", "", *PAIR_HEADER,
          *pair_rows(runs, pairs, LOSS)]


def patch_section(runs) -> list[str]:
  sizes = list(dict.fromkeys(size_and_patch(n)[0] for n in runs))
  patches = sorted({size_and_patch(n)[1] for n in runs}, reverse=True)
  pairs = [(f"{s}/{p}", f"{s}/{q}") for s in sizes for p, q in zip(patches, patches[1:])
           if f"{s}/{p}" in runs and f"{s}/{q}" in runs]
  return ["", "## 2. Smaller patches (more Gflops) at a fixed model size (equal steps)", "",
          *PAIR_HEADER, *pair_rows(runs, pairs, LOSS)]


def _spearman(runs, names, values_of) -> tuple[float, float]:
  y = [values_of(n) for n in names]
  return (spearmanr([runs[n]["gflops"] for n in names], y).statistic,
          spearmanr([runs[n]["params"] for n in names], y).statistic)


def gflops_section(runs, resamples: int = 2000) -> list[str]:
  """Spearman correlations of the mean loss with Gflops and with parameters at every step;
  the interval at the end resamples each model's seeds."""
  names = list(runs)
  curves = {n: curve(runs[n], LOSS) for n in names}
  steps = sorted(set.intersection(*(set(c) for c in curves.values())))
  gap = {}
  for step in steps:
    rho_g, rho_p = _spearman(runs, names, lambda n: np.mean(list(curves[n][step].values())))
    gap[step] = [rho_g - rho_p]
  last = steps[-1]
  rng = np.random.default_rng(0)
  draws = []
  for _ in range(resamples):
    picks = {n: rng.choice(list(curves[n][last].values()), len(curves[n][last])) for n in names}
    draws.append(_spearman(runs, names, lambda n: picks[n].mean()))
  rho_g, rho_p = _spearman(runs, names, lambda n: np.mean(list(curves[n][last].values())))
  (g_low, p_low), (g_high, p_high) = np.quantile(np.array(draws), [0.025, 0.975], axis=0)
  start = holds_from(gap)
  lines = ["", "## 3. Gflops or parameters", "",
           f"Spearman rank correlation of the held-out loss (mean over t and seeds) over the "
           f"{len(names)} models at step {last}: with forward Gflops {rho_g:+.2f} [{g_low:+.2f}, "
           f"{g_high:+.2f}], with parameters {rho_p:+.2f} [{p_low:+.2f}, {p_high:+.2f}] (-1: more "
           "is always better; intervals resample each model's seeds). Gflops rank the models "
           "better than parameters (the claim) from step "
           f"{'- (not at the end)' if start is None else start} on.", ""]
  shown = steps[::4] + ([last] if steps[::4][-1] != last else [])
  lines += ["| step | " + " | ".join(map(str, shown)) + " |", "|---|" + "---|" * len(shown)]
  rhos = {s: _spearman(runs, names, lambda n, s=s: np.mean(list(curves[n][s].values())))
          for s in shown}
  lines.append("| rho with Gflops | " + " | ".join(f"{rhos[s][0]:+.2f}" for s in shown) + " |")
  lines.append("| rho with parameters | " + " | ".join(f"{rhos[s][1]:+.2f}" for s in shown)
               + " |")
  if all("fd_end" in runs[n] for n in names):
    rho_g, rho_p = _spearman(runs, names, lambda n: np.mean(list(runs[n]["fd_end"].values())))
    lines += ["", f"The same for FD at the end (1,000 samples, mean over seeds): with forward "
                  f"Gflops {rho_g:+.2f}, with parameters {rho_p:+.2f}."]
  lines += ["", f"At each noise level, at step {last}:", "",
            "| t | rho with Gflops | rho with parameters | Gflops rank better |",
            "|---|---|---|---|"]
  for t, key in zip(TIMES, BY_T):
    rho_g, rho_p = _spearman(runs, names, lambda n, k=key: np.mean(_final(runs[n], k)))
    lines.append(f"| {t:g} | {rho_g:+.2f} | {rho_p:+.2f} | {'yes' if rho_g < rho_p else 'no'} |")
  lines += ["", "| model | forward Mflops | params (K) | loss at the end [interval] | "
            "FD at the end [interval] |", "|---|---|---|---|---|"]
  for n in sorted(names, key=lambda n: runs[n]["gflops"]):
    fd = list(_fd_end(runs[n]).values())
    lines.append(f"| {n} | {runs[n]['gflops'] * 1e3:.2f} | {runs[n]['params'] / 1e3:.0f} | "
                 f"{_interval(_final(runs[n], LOSS))} | "
                 f"{_interval(fd, 2) if fd else '-'} |")
  return lines


def loss_at_compute(run: dict, tflops: float) -> list[float]:
  """The held-out loss of each seed at a training compute inside its evaluations, linear in
  log compute between them; [] outside."""
  points = curve(run, LOSS)
  steps = sorted(points)
  rows = _first_seed_rows(run)
  x = np.log([rows[s]["train_tflops"] for s in steps])
  if not x[0] <= np.log(tflops) <= x[-1]:
    return []
  return [float(np.interp(np.log(tflops), x, [points[s][seed] for s in steps]))
          for seed in sorted(points[steps[0]])]


def compute_section(runs) -> list[str]:
  """Neighbouring sizes at one patch size at the powers-of-2 training computes both reached:
  FD exactly there (the sweep evaluates at those steps), the loss interpolated."""
  sizes = list(dict.fromkeys(size_and_patch(n)[0] for n in runs))
  patches = sorted({size_and_patch(n)[1] for n in runs}, reverse=True)
  verdicts = []
  lines = ["", "## 4. Equal training compute", "",
           "Neighbouring sizes at one patch size where both reached the same training compute "
           "(3 x forward flops x batch x steps): the held-out loss interpolated linearly in "
           "log compute between its evaluations every 100 steps, FD where the sweep sampled "
           "both runs at that compute. Differences: larger minus smaller, per seed (negative: "
           "the larger model is the better use of compute).", "",
           "| patch | smaller | larger | Tflops | loss difference per seed | "
           "FD difference per seed | larger wins (loss) |", "|---|---|---|---|---|---|---|"]
  for patch in patches:
    for small, large in zip(sizes, sizes[1:]):
      a, b = runs.get(f"{small}/{patch}"), runs.get(f"{large}/{patch}")
      if a is None or b is None:
        continue
      fd_a, fd_b = _fd_by_compute(a), _fd_by_compute(b)
      by_compute = {}
      end = min(_end_tflops(a), _end_tflops(b))  # the smaller model's whole training
      for tflops in sorted(set(fd_a) | set(fd_b) | {end}):
        la, lb = loss_at_compute(a, tflops), loss_at_compute(b, tflops)
        if la and lb:
          by_compute[tflops] = [y - x for x, y in zip(la, lb)]
          fd = ([y - x for x, y in zip(fd_a[tflops], fd_b[tflops])]
                if tflops in fd_a and tflops in fd_b else [])
          lines.append(f"| {patch} | {small} | {large} | {tflops:.3g} | "
                       f"{_signed(by_compute[tflops])} | {_signed(fd) if fd else '-'} | "
                       f"{'yes' if np.mean(by_compute[tflops]) < 0 else 'no'} |")
      start = holds_from(by_compute)
      verdicts.append(f"- {large}/{patch} against {small}/{patch}: " + (
          f"the larger wins from {start:.3g} Tflops on" if start is not None else
          "the larger does not win at the largest compute both reached" if by_compute else
          "no training compute in common"))
  return lines + [""] + verdicts


def _end_tflops(run: dict) -> float:
  rows = _first_seed_rows(run)
  return rows[max(rows)]["train_tflops"]


def _fd_by_compute(run: dict) -> dict[float, list[float]]:
  """{training Tflops rounded to a power of 2: [FD per seed]} of the run's FD evaluations
  before its last step (the sweep puts them at powers of 2 Tflops)."""
  points = curve(run, FD)
  out = {}
  for step in sorted(points)[:-1]:
    tflops = _first_seed_rows(run)[step]["train_tflops"]
    out[float(2.0 ** round(np.log2(tflops)))] = list(points[step].values())
  return out


def floor_lines(floor_path: Path, final_fd: bool) -> list[str]:
  """What real digits score, for each number of samples the FD columns use."""
  if not floor_path.exists():
    return []
  floor = json.loads(floor_path.read_text())
  sizes = ["300"] + (["1000"] if final_fd else [])
  cells = [f"{n} real digits score {r['mean']:.2f} (sd {r['sd']:.2f}, {r['low']:.2f}-"
           f"{r['high']:.2f})" for n in sizes if n in floor["rows"]
           for r in [floor["rows"][n]["fd"]]]
  return ["", f"FD floor ({floor['draws']} draws of real training digits, "
              f"experiments/fd_floor.py): {'; '.join(cells)}. Two models within about 2 sd "
              "of each other are not ranked by one evaluation. 'FD at the end' is of "
              + ("1,000 samples per run and seed (experiments/final_fd.py)." if final_fd else
                 "the sweep's last evaluation (300 samples).")]


def plot_loss_by_t(runs, path: Path):
  """One panel per t: the held-out loss (mean over seeds) against steps, a colour per patch
  size and a line style per model size: where each model is still learning."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(TIMES), figsize=(4 * len(TIMES), 3.8), sharex=True)
  styles = {"S": ":", "B": "-", "L": "--", "XL": "-."}
  patches = sorted({size_and_patch(n)[1] for n in runs}, reverse=True)
  for name, run in runs.items():
    size, patch = size_and_patch(name)
    for ax, t in zip(axes, TIMES):
      points = curve(run, f"eval/loss_t={t:g}")
      if points:
        steps = sorted(points)
        ax.plot(steps, [np.mean(list(points[s].values())) for s in steps], styles.get(size, "-"),
                color=f"C{patches.index(patch)}", label=name, lw=1.3)
  for ax, t in zip(axes, TIMES):
    ax.set(title=f"t = {t:g}", xlabel="training step", yscale="log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.grid(True, which="both", alpha=0.3)
  axes[0].set_ylabel("held-out loss (EMA)")
  axes[-1].legend(fontsize=7, ncol=2)
  fig.suptitle("Loss by noise level (t = 0 noise, 1 data): colour = patch size, "
               "line = model size (S dotted, B solid, L dashed)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sweep-dir", required=True, type=Path)
  parser.add_argument("--out", required=True, type=Path)
  parser.add_argument("--fd-floor", type=Path,
                      default=Path(__file__).parent / "results" / "fd_floor.json")
  parser.add_argument("--final-fd", type=Path, help="experiments/final_fd.py's final_fd.json "
                      "(default: the one in --out, if any)")
  args = parser.parse_args()
  runs = load(args.sweep_dir / "results.jsonl")
  final_fd = add_final_fd(runs, args.final_fd or args.out / "final_fd.json")
  seeds = sorted({s for r in runs.values() for s in r["seeds"]})
  text = "\n".join([
      "# Scaling claims of the DiT paper, checked past the plateau", "",
      f"From {args.sweep_dir / 'results.jsonl'}: {len(runs)} models, seeds {seeds}; "
      "'loss' is the held-out loss (EMA parameters, 128 test digits, fixed noise) averaged over "
      f"t = {', '.join(f'{t:g}' for t in TIMES)}, mean over seeds [95% bootstrap interval of "
      "the mean over seeds; with 2 seeds narrower than the truth]; differences (better by the "
      "claim minus worse) are paired by seed. 'from step' is the first evaluation (every 100 "
      "steps) from which the claim holds, in the mean over seeds, at every later one; 'no "
      "(d)': it does not hold at the end, by the mean difference d.",
      *floor_lines(args.fd_floor, final_fd), "",
      *size_section(runs), *patch_section(runs), *gflops_section(runs),
      *compute_section(runs), ""])
  args.out.mkdir(parents=True, exist_ok=True)
  (args.out / "analysis.md").write_text(text)
  plot_loss_by_t(runs, args.out / "loss_by_t.png")
  print(text)


if __name__ == "__main__":
  main()
