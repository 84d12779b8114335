"""A sweep's results: one row per evaluation of every finished run (`results.jsonl`), a markdown
table of the final metrics with bootstrap intervals over seeds, and plots of each metric
against training compute, steps and forward Gflops.

Training compute is the DiT paper's estimate: 3 x forward Gflops x batch x steps (the backward
pass costs about twice the forward), multiply-add = 1 flop.
"""
import math

import numpy as np

from dit_jax import paths

from dit_jax.engine.run_log import read_history
from dit_jax.studies.reports import markdown_table, save_figure
from dit_jax.state_files import rewrite_json_lines, write_atomic
from dit_jax.studies.sweep import RunSpec, Sweep, expand, read_result

LEVEL, RESAMPLES = 0.95, 10_000


def bootstrap_interval(values, level: float = LEVEL, resamples: int = RESAMPLES,
                       seed: int = 0) -> tuple[float, float, float]:
  """(mean, low, high): the percentile bootstrap interval of the mean of `values` (resampled
  with replacement). One value gives (v, v, v): no interval without repetitions."""
  v = np.asarray(values, np.float64)
  mean = float(v.mean())
  if v.size < 2:
    return mean, mean, mean
  picks = np.random.default_rng(seed).integers(0, v.size, (resamples, v.size))
  low, high = np.quantile(v[picks].mean(axis=1), [(1 - level) / 2, (1 + level) / 2])
  return mean, float(low), float(high)


def train_tflops(gflops: float, batch_size: int, step: int) -> float:
  """Training compute after `step` steps, as the DiT paper counts it: 3 x forward x batch x
  steps (the backward pass costs about twice the forward), in Tflops."""
  return 3 * gflops * batch_size * step / 1e3


def compute_matched_steps(gflops: float, batch_size: int, steps: int, tflops,
                          first: int = 1) -> tuple[int, ...]:
  """The steps in [first, steps) at which a run of `gflops` per input reaches each training
  compute of `tflops` (`train_tflops`), rounded to the nearest step: evaluating every run of
  a sweep there compares models at equal compute without interpolation."""
  per_step = train_tflops(gflops, batch_size, 1)
  found = {round(c / per_step) for c in tflops}
  return tuple(sorted(s for s in found if first <= s < steps))


def run_rows(run: RunSpec, info: dict, history: list[dict]) -> list[dict]:
  """One row per evaluated step in a run's `history` (per logged training row when it never
  evaluates), the metrics of every evaluator that ran at that step together, with the latest
  training loss, the step's training compute and the run's counts."""
  training = [h for h in history if "loss" in h]
  evaluated = {}
  for h in history:  # each evaluator logs a row of its own
    if any(k.startswith("eval/") for k in h):
      evaluated.setdefault(h["step"], {}).update(h)
  points = [evaluated[step] for step in sorted(evaluated)] or training
  rows = []
  for point in points:
    before = [h for h in training if h["step"] <= point["step"]]
    loss = before[-1]["loss"] if before else math.nan
    rows.append(dict(
        run=run.name, seed=run.seed, step=point["step"], gflops=info["gflops"],
        params=info["params"],
        train_tflops=train_tflops(info["gflops"], info["batch_size"], point["step"]),
        **{k: v for k, v in point.items() if k.startswith("eval/")}, loss=loss))
  return rows


def collect(sweep: Sweep, root, log=print) -> tuple[list[dict], dict, list[RunSpec]]:
  """(rows of every finished run, {(name, seed): result.json}, the unfinished runs: a damaged
  result.json counts as unfinished, with a message through `log`)."""
  rows, infos, missing = [], {}, []
  for run in expand(sweep, root):
    info = read_result(run, log)
    if info is None:
      missing.append(run)
      continue
    history = read_history(run.workdir)
    speeds = [h["steps_per_s"] for h in history if "steps_per_s" in h]
    info["steps_per_s"] = float(np.median(speeds)) if speeds else math.nan
    infos[run.name, run.seed] = info
    rows.extend(run_rows(run, info, history))
  return rows, infos, missing


def _by_run(rows: list[dict]) -> dict[str, list[dict]]:
  out = {}
  for row in rows:
    out.setdefault(row["run"], []).append(row)
  return out


def final_rows(rows: list[dict]) -> list[dict]:
  """The last evaluation of each (run, seed)."""
  last = {}
  for row in rows:
    key = row["run"], row["seed"]
    if key not in last or row["step"] > last[key]["step"]:
      last[key] = row
  return list(last.values())


def _metric_name(metric: str) -> str:
  names = {"eval/fd": "FD", "eval/fid": "FID", "eval/sfid": "sFID", "eval/is": "IS"}
  return names.get(metric, metric.removeprefix("eval/"))


def _cell(values) -> str:
  values = [v for v in values if v is not None and not math.isnan(v)]
  if not values:
    return "-"
  mean, low, high = bootstrap_interval(values)
  digits = 3 if abs(mean) < 10 else 2
  if len(values) < 2:
    return f"{mean:.{digits}f}"
  return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _seconds(s: float) -> str:
  return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def markdown(sweep: Sweep, rows: list[dict], infos: dict, missing: list) -> str:
  runs = list(dict.fromkeys(r.name for r in expand(sweep, "")))
  final = _by_run(final_rows(rows))
  metrics = [m for m in sweep.metrics if any(m in r for r in rows)]
  first = next(iter(infos.values()), {})
  lines = [f"# {sweep.title}", ""]
  if sweep.description:
    lines += [sweep.description.strip(), ""]
  total = sum(i["seconds"] for i in infos.values())
  lines += [
      f"{len(runs)} runs x {len(sweep.seeds)} seeds ({', '.join(map(str, sweep.seeds))}), "
      f"{first.get('steps', '?')} steps at batch {first.get('batch_size', '?')} each (unless a "
      f"run's fields say otherwise), on {first.get('devices', '?')}. Metrics at each run's last "
      f"evaluation: mean over seeds [{LEVEL:.0%} percentile bootstrap interval of the mean, "
      f"{RESAMPLES:,} resamples of the seeds; with few seeds it is narrower than the truth]. "
      "Gflops: forward of one input, multiply-add = 1 flop; train Tflops = 3 x Gflops x batch x "
      f"steps. Wall clock: mean per run, evaluations included; {_seconds(total)} in all.", ""]
  header = ["run", "Gflops", "params (M)", "train Tflops", "steps/s", "wall clock",
            *[_metric_name(m) for m in metrics]]
  body = []
  for name in runs:
    if name not in final:
      body.append([name] + ["not run"] * (len(header) - 1))
      continue
    group = final[name]
    info = [infos[name, r["seed"]] for r in group]
    body.append([name, f"{group[0]['gflops']:.4g}", f"{group[0]['params'] / 1e6:.3f}",
                 f"{np.mean([r['train_tflops'] for r in group]):.4g}",
                 f"{np.mean([i['steps_per_s'] for i in info]):.2f}",
                 _seconds(np.mean([i["seconds"] for i in info])),
                 *[_cell([r.get(m) for r in group]) for m in metrics]])
  lines.append(markdown_table(header, body))
  by_run = _by_run(rows)
  for metric in metrics:
    lines += ["", f"{_metric_name(metric)} over training (mean over seeds [interval]):", ""]
    steps = sorted({r["step"] for r in rows if metric in r})
    lines.append(markdown_table(["run", *(f"step {s}" for s in steps)], [
        [name, *(_cell([r.get(metric) for r in by_run.get(name, []) if r["step"] == s])
                 for s in steps)] for name in runs]))
  if missing:
    lines += ["", f"Not finished ({len(missing)}): " + ", ".join(
        f"{r.name} seed {r.seed}" for r in missing) + "."]
  return "\n".join(lines) + "\n"


def _two_or_five(value: float, _) -> str:
  leading = value / 10 ** math.floor(math.log10(value))
  return f"{value:g}" if any(abs(leading - d) < 1e-6 for d in (2, 5)) else ""


def plot_metric(sweep: Sweep, rows: list[dict], metric: str, path):
  """Three panels: the metric against training Tflops and against steps (mean over seeds, the
  seeds as dots), and its final value against forward Gflops (with the interval)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
  name = _metric_name(metric)
  finals = _by_run(final_rows(rows))
  values = [r[metric] for r in rows if metric in r and r[metric] > 0]
  log_y = bool(values) and max(values) / min(values) > 10
  most_params = max(r["params"] for r in rows)
  for i, (run, group) in enumerate(_by_run([r for r in rows if metric in r]).items()):
    colour = f"C{i % 10}"
    steps = sorted({r["step"] for r in group})
    mean = [np.mean([r[metric] for r in group if r["step"] == s]) for s in steps]
    compute = [np.mean([r["train_tflops"] for r in group if r["step"] == s]) for s in steps]
    axes[0].plot(compute, mean, "o-", color=colour, label=run, ms=3)
    axes[1].plot(steps, mean, "o-", color=colour, label=run, ms=3)
    for ax, x in ((axes[0], "train_tflops"), (axes[1], "step")):
      ax.plot([r[x] for r in group], [r[metric] for r in group], ".", color=colour, alpha=0.3)
    final = finals[run]
    m, low, high = bootstrap_interval([r[metric] for r in final])
    size = 4 + 10 * np.sqrt(final[0]["params"] / most_params)  # area ~ parameters
    axes[2].errorbar([final[0]["gflops"]], [m], yerr=[[m - low], [high - m]], fmt="o",
                     color=colour, capsize=3, ms=size, alpha=0.8)
    axes[2].annotate(run, (final[0]["gflops"], m), fontsize=7, xytext=(4, 3),
                     textcoords="offset points")
  axes[0].set(xscale="log", xlabel="training compute (Tflops)", ylabel=name)
  axes[1].set(xlabel="training step", ylabel=name)
  axes[2].set(xscale="log", xlabel="forward Gflops per input (marker area ~ parameters)",
              ylabel=f"final {name}")
  for ax in axes:
    ax.grid(True, which="both", alpha=0.3)
    if log_y:
      ax.set_yscale("log")
    for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
      if scale == "log":  # 20, not 2 x 10^1; over a decade, minor ticks at 2 and 5 x 10^k only
        low, high = sorted(axis.get_view_interval())
        plain = matplotlib.ticker.FormatStrFormatter("%g")
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(plain if high < 10 * low else
                                 matplotlib.ticker.FuncFormatter(_two_or_five))
  axes[1].legend(fontsize=7)
  fig.suptitle(f"{sweep.title}: {name}")
  fig.tight_layout()
  save_figure(fig, path, dpi=110)
  plt.close(fig)


def write(sweep: Sweep, root, log=print) -> dict:
  """results.jsonl, results.md and one PNG per metric in `root`; returns their paths and the
  counts of finished and missing runs."""
  root = paths.as_path(root)
  rows, infos, missing = collect(sweep, root, log)
  paths.make_dirs(root)
  rewrite_json_lines(root / "results.jsonl", rows)
  write_atomic(root / "results.md", markdown(sweep, rows, infos, missing))
  plots = []
  for metric in sweep.metrics:
    if any(metric in r for r in rows):
      plots.append(root / f"{_metric_name(metric).lower().replace('/', '_')}.png")
      plot_metric(sweep, rows, metric, plots[-1])
  return dict(results=root / "results.jsonl", table=root / "results.md", plots=plots,
              finished=len(infos), missing=len(missing))
