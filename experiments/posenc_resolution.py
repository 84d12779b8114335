"""Position encodings vs sampling resolution: the tiny DiTs of configs/sweeps/posenc.py
(trained on 8x8 digits) sampled larger and smaller.

    dit-jax sweep --config configs/sweeps/posenc.py --workdir runs/sweeps/posenc
    python experiments/posenc_resolution.py --sweep-dir runs/sweeps/posenc \\
                                            [--out experiments/results]

Finds every run of the sweep in --sweep-dir (`sweep.expand`), samples its EMA model at 6, 8,
12 and 16 pixels square (patch 1: as many tokens a side), and scores the samples with a digit
classifier fitted on the real 8x8 training digits (samples are resized back to 8x8 first).
Writes to --out:
  posenc_resolution.md      accuracy (% of samples read as the requested digit) and mean ink
                            per run x resolution, the classifier's accuracy, training runs
  posenc_resolution.json    the same numbers
  posenc_resolution.png     sample grids (rows runs, columns resolutions) and the curves
"""
import argparse
import json
import time
from pathlib import Path

import jax
import matplotlib
import numpy as np
from sklearn.svm import SVC

from dit_jax import flow
from dit_jax.data.digits import NUM_TRAIN, digit_images, resize_gray
from dit_jax.engine.run_log import read_history
from dit_jax.models import create_model
from dit_jax.sampling import images, runs
from dit_jax.sampling.sampler import ImageSampler
from dit_jax.studies import sweep
from dit_jax.training import denoiser

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

SWEEP = Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "posenc.py"
RESOLUTIONS = (6, 8, 12, 16)
TRAIN_RESOLUTION = 8
NUM_CLASSES = 10
SHOWN_PER_CLASS = 2  # samples per digit in the figure


# The sweep's runs.


def finished_runs(sweep_file: str, sweep_dir: Path) -> dict[str, sweep.RunSpec]:
  """{label: run} of every run of the sweep; the label is the run's name (with its seed when
  the sweep has several). Refuses a sweep with unfinished runs: train them first."""
  _, spec = sweep.load(sweep_file)
  runs = sweep.expand(spec, sweep_dir)
  missing = [str(r.workdir) for r in runs if not (r.workdir / "result.json").exists()]
  if missing:
    raise SystemExit(f"unfinished runs (no result.json): {', '.join(missing)}; run "
                     f"`dit-jax sweep --config {sweep_file} --workdir {sweep_dir}` first")
  several = len(spec.seeds) > 1
  return {f"{r.name} (seed {r.seed})" if several else r.name: r for r in runs}


def run_summary(workdir: Path) -> dict:
  """Wall clock (the sweep's result.json), final training loss and steps/s."""
  info = json.loads((workdir / "result.json").read_text())
  training = [h for h in read_history(workdir) if "loss" in h]
  last = training[-1] if training else {}
  return dict(seconds=info["seconds"], loss=last.get("loss"),
              steps_per_s=last.get("steps_per_s"))


# Sampling.


def sample_resolutions(workdir: Path, per_class: int, seed: int) -> tuple[int, dict]:
  """(trained step, {side: (N, side, side, C) uint8}) from the run's EMA parameters, N =
  per_class * 10 in label order; the same key at every side. Samples are cached in the run
  directory (sampling at 16x16 takes minutes on CPU), so redrawing the report is cheap."""
  config, state = runs.load_run(workdir)
  step = int(state.step)
  cache = workdir / f"posenc_samples_step{step}_seed{seed}_per{per_class}.npz"
  if cache.exists():
    with np.load(cache) as saved:
      return step, {side: saved[f"side_{side}"] for side in RESOLUTIONS}
  model = create_model(config.model)
  objective = flow.make_objective(config.objective)
  labels = class_labels(per_class)
  channels = 1  # digits are grayscale
  samples = {}
  for side in RESOLUTIONS:
    sampler = ImageSampler(model, objective, config.sample, (side, side, channels))
    start = time.perf_counter()
    out = sampler(state.ema_params, labels, jax.random.PRNGKey(seed))
    samples[side] = images.to_uint8(out)
    print(f"  {side}x{side}: {len(labels)} samples in {time.perf_counter() - start:.1f} s")
  np.savez(cache, **{f"side_{side}": x for side, x in samples.items()})
  return step, samples


def class_labels(per_class: int) -> np.ndarray:
  return np.repeat(np.arange(NUM_CLASSES), per_class)


# Quality proxy.


def to_features(images_NHW: np.ndarray) -> np.ndarray:
  """uint8 images of any side -> (N, 64) floats in [0, 1] of their 8x8 resizes."""
  small = [resize_gray(np.asarray(im), TRAIN_RESOLUTION)[..., 0] for im in images_NHW]
  return np.stack(small).reshape(len(small), -1).astype(np.float32) / 255.0


def fit_classifier() -> tuple[SVC, float, np.ndarray, np.ndarray]:
  """An RBF SVM on the real training digits (the DiTs' split); returns it, its accuracy on
  the real test split, and the test digits and labels."""
  digits, labels = digit_images()
  classifier = SVC(C=10.0).fit(to_features(digits[:NUM_TRAIN]), labels[:NUM_TRAIN])
  test_x, test_y = digits[NUM_TRAIN:], labels[NUM_TRAIN:]
  return classifier, float(classifier.score(to_features(test_x), test_y)), test_x, test_y


def resized_real_accuracy(classifier, test_x, test_y, side: int) -> float:
  """Accuracy on real test digits resized to side x side and back: what resizing alone costs."""
  resized = np.stack([resize_gray(im, side)[..., 0] for im in test_x])
  return float(classifier.score(to_features(resized), test_y))


def score(classifier, samples_NHWC: np.ndarray, labels: np.ndarray) -> dict:
  """Accuracy = fraction read as the requested digit; ink = mean intensity in [0, 1]."""
  predicted = classifier.predict(to_features(samples_NHWC[..., 0]))
  return dict(accuracy=float(np.mean(predicted == labels)),
              ink=float(samples_NHWC.mean() / 255.0))


# Report.


def table_row(name: str, values: list[str]) -> str:
  return f"| {name} | " + " | ".join(values) + " |"


def markdown(results: dict) -> str:
  """Accuracy and ink tables (rows runs, columns resolutions) and the training runs."""
  names = list(results["cells"])
  sides = [f"{s}x{s}" + (" (train)" if s == TRAIN_RESOLUTION else "") for s in RESOLUTIONS]
  head = ["| encoding | " + " | ".join(sides) + " |", "|---" * (len(sides) + 1) + "|"]
  cells = results["cells"]
  accuracy = [table_row(e, [f"{cells[e][str(s)]['accuracy']:.1%}" for s in RESOLUTIONS])
              for e in names]
  real = results["real_resized_accuracy"]
  accuracy.append(table_row("*real test digits, resized there and back*",
                      [f"*{real[str(s)]:.1%}*" for s in RESOLUTIONS]))
  ink = [table_row(e, [f"{cells[e][str(s)]['ink']:.3f}" for s in RESOLUTIONS]) for e in names]
  runs = ["| encoding | steps | train wall clock | final loss | steps/s at end |",
          "|---|---|---|---|---|"]
  for e in names:
    run = results["runs"][e]
    clock = f"{run['seconds']:.0f} s" if run.get("seconds") else "n/a"
    runs.append(f"| {e} | {run['step']} | {clock} | {run['loss']:.4f} | "
                f"{run['steps_per_s']:.2f} |")
  n = results["per_class"] * NUM_CLASSES
  return "\n".join([
      "# Position encodings vs sampling resolution (digits, trained at 8x8)",
      "",
      f"Accuracy: % of {n} samples per cell ({results['per_class']} per digit) that an RBF SVM "
      "fitted on the real 8x8 training digits reads as the requested digit, after resizing "
      "the sample to 8x8 (PIL bilinear). Chance is 10%. Sampler: "
      f"{results['sampler']}, seed {results['seed']}.",
      "",
      *head, *accuracy,
      "",
      f"Classifier accuracy on the {results['real_test_count']} real test digits: "
      f"**{results['classifier_test_accuracy']:.1%}**. The italic row is the classifier on "
      "those digits resized to each side and back to 8x8 (the cost of resizing alone).",
      "",
      "Mean pixel intensity (\"ink\", 0 black .. 1 white) of the samples; real 8x8 digits: "
      f"{results['real_ink']:.3f}.",
      "",
      *head, *ink,
      "",
      f"Training runs ({results['sweep']}, batch 64, 2-core CPU; wall clock includes data "
      "loading, compilation, the final sample grid and the sweep's evaluations):",
      "",
      *runs,
      "",
  ])


def tile(images_NHW: np.ndarray, rows: int, pad: int = 1) -> np.ndarray:
  """Images in a rows x (N / rows) grid on a mid-gray border (digits have black backgrounds)."""
  n, h, w = images_NHW.shape
  cols = n // rows
  grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad), 128, np.uint8)
  for i, image in enumerate(images_NHW):
    r, c = divmod(i, cols)
    grid[pad + r * (h + pad):][:h, pad + c * (w + pad):][:, :w] = image
  return grid


def show_cell(ax, samples_NHWC: np.ndarray, per_class: int):
  """SHOWN_PER_CLASS rows of digits 0-9 from one cell's label-ordered samples."""
  by_class = samples_NHWC[..., 0].reshape(NUM_CLASSES, per_class, *samples_NHWC.shape[1:3])
  shown = by_class[:, :SHOWN_PER_CLASS].swapaxes(0, 1).reshape(-1, *samples_NHWC.shape[1:3])
  ax.imshow(tile(shown, SHOWN_PER_CLASS), cmap="gray", vmin=0, vmax=255,
            interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks([])


def plot_curves(ax, results: dict, key: str, reference: float | dict, ylabel: str):
  for e in results["cells"]:
    ax.plot(RESOLUTIONS, [results["cells"][e][str(s)][key] for s in RESOLUTIONS], "o-", label=e)
  if isinstance(reference, dict):
    ax.plot(RESOLUTIONS, [reference[str(s)] for s in RESOLUTIONS], "k--", lw=1,
            label="real, resized")
  else:
    ax.axhline(reference, color="k", ls="--", lw=1, label="real 8x8 digits")
  ax.axvline(TRAIN_RESOLUTION, color="gray", lw=0.8, alpha=0.5)
  ax.set(xlabel="sample side (pixels = tokens a side; trained at 8)", ylabel=ylabel,
         xticks=RESOLUTIONS, ylim=(0, 1.02 if key == "accuracy" else None))
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)


def plot(results: dict, samples: dict, path: Path):
  """Top: a grid of sample grids (rows runs, columns sides; each two rows of 0-9).
  Bottom: accuracy and ink against the sample side."""
  names = list(results["cells"])
  fig = plt.figure(figsize=(16, 7.2))
  top, bottom = fig.subfigures(2, 1, height_ratios=[1.1, 1])
  cells = top.subplots(len(names), len(RESOLUTIONS), squeeze=False,
                       gridspec_kw=dict(wspace=0.05, hspace=0.3))
  for i, e in enumerate(names):
    for j, s in enumerate(RESOLUTIONS):
      show_cell(cells[i, j], samples[e][s], results["per_class"])
      acc = results["cells"][e][str(s)]["accuracy"]
      cells[i, j].set_title(f"{e}, {s}x{s}: {acc:.0%}", fontsize=9, pad=2)
  top.suptitle("DiTs trained on 8x8 digits, sampled at other sizes: two samples of each digit "
               "0-9 per cell (title: classifier accuracy over all samples of the cell)")
  acc_ax, ink_ax = bottom.subplots(1, 2)
  plot_curves(acc_ax, results, "accuracy", results["real_resized_accuracy"],
              "classifier accuracy")
  plot_curves(ink_ax, results, "ink", results["real_ink"], "mean intensity")
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sweep-dir", required=True, help="the --workdir of `dit-jax sweep "
                      "--config configs/sweeps/posenc.py`")
  parser.add_argument("--sweep", default=str(SWEEP), help="the sweep file it ran")
  parser.add_argument("--out", default="experiments/results")
  parser.add_argument("--per-class", type=int, default=20, help="samples per digit and cell")
  parser.add_argument("--seed", type=int, default=0, help="sampling key")
  args = parser.parse_args()
  if args.per_class < SHOWN_PER_CLASS:
    parser.error(f"--per-class must be at least {SHOWN_PER_CLASS}")
  runs = finished_runs(args.sweep, Path(args.sweep_dir))
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)

  classifier, test_accuracy, test_x, test_y = fit_classifier()
  print(f"classifier accuracy on real test digits: {test_accuracy:.1%}")
  labels = class_labels(args.per_class)
  first = next(iter(runs.values())).workdir  # the sampler as trained (--config.* included)
  sampler_config = json.loads((first / "config.json").read_text())["sample"]
  results = dict(
      sweep="configs/sweeps/posenc.py" if args.sweep == str(SWEEP) else args.sweep,
      per_class=args.per_class, seed=args.seed, classifier_test_accuracy=test_accuracy,
      real_test_count=len(test_y), real_ink=float(digit_images()[0].mean() / 255.0),
      real_resized_accuracy={str(s): resized_real_accuracy(classifier, test_x, test_y, s)
                             for s in RESOLUTIONS},
      sampler=(f"{sampler_config['method']}, {sampler_config['steps']} steps, "
               f"guidance {sampler_config['cfg_scale']}"),
      runs={}, cells={})
  samples = {}
  for name, run in runs.items():
    print(f"{name}: sampling {run.workdir}")
    step, samples[name] = sample_resolutions(run.workdir, args.per_class, args.seed)
    results["runs"][name] = dict(step=step, **run_summary(run.workdir))
    results["cells"][name] = {str(s): score(classifier, x, labels)
                              for s, x in samples[name].items()}

  table = markdown(results)
  (out / "posenc_resolution.md").write_text(table)
  (out / "posenc_resolution.json").write_text(json.dumps(results, indent=2) + "\n")
  plot(results, samples, out / "posenc_resolution.png")
  print(table)


if __name__ == "__main__":
  main()
