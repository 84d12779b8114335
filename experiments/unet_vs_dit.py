"""U-Net (each way of injecting time and class) vs a DiT of similar FLOPs on 8x8 digits.

    python experiments/unet_vs_dit.py [--steps 1000] [--workdir runs/unet_vs_dit]
                                      [--out experiments/results]

Trains configs/unet.py:{add, scale_shift, cross_attn} and configs/quickstart.py (the DiT)
with the same data, objective, optimizer, batch and number of steps (a run whose final
checkpoint exists is not retrained), samples each EMA model (the config's sampler and
guidance) and scores the samples with the RBF-SVM digit classifier of
experiments/posenc_resolution.py (fitted on the real training digits). Writes to --out:
  unet_vs_dit.md     Gflops, parameters, final loss, wall clock, classifier accuracy per model
  unet_vs_dit.json   the same numbers and the loss curves
  unet_vs_dit.png    loss curves and one sample grid per model (rows: digits 0-9)
"""
import argparse
import json
import time
from pathlib import Path

import jax
import matplotlib
import numpy as np
from posenc_resolution import (NUM_CLASSES, class_labels, final_metrics, fit_classifier, score,
                               tile)

from dit_jax import flow, images, train
from dit_jax.config import load_config
from dit_jax.models import create_model
from dit_jax.sample import ImageSampler

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RUNS = {
    "U-Net add": f"{CONFIGS / 'unet.py'}:add",
    "U-Net scale_shift": f"{CONFIGS / 'unet.py'}:scale_shift",
    "U-Net cross_attn": f"{CONFIGS / 'unet.py'}:cross_attn",
    "DiT (quickstart)": str(CONFIGS / "quickstart.py"),
}
SHOWN_PER_CLASS = 8


def run_dir(root: Path, name: str) -> Path:
  return root / name.split(" (")[0].replace(" ", "_").replace("-", "").lower()


def train_run(spec: str, steps: int, workdir: Path) -> dict:
  """Trains a config unless its final checkpoint exists; keeps the wall clock in workdir."""
  timing = workdir / "train_time.json"
  if timing.exists() and json.loads(timing.read_text())["steps"] == steps:
    print(f"{workdir}: already trained")
  else:
    config = load_config(spec)
    config.train.update(steps=steps, sample_every=steps, log_every=50, checkpoint_every=steps)
    start = time.perf_counter()
    train.train_and_evaluate(config, str(workdir))
    timing.write_text(json.dumps(dict(steps=steps, seconds=time.perf_counter() - start)))
  return json.loads(timing.read_text())


def analytic_counts(config) -> tuple[float, int]:
  """(forward Gflops of one 8x8x1 digit, parameters) of the config's model."""
  model = create_model(config.model)
  f, p = model.forward_flops(8, 8, 1), model.param_counts(8, 8, 1)
  return sum(f.values()) / 1e9, sum(p.values())


def sample_run(workdir: Path, per_class: int, seed: int) -> np.ndarray:
  """(per_class * 10, 8, 8, 1) uint8 EMA samples in label order, cached in the run dir."""
  config, state = train.load_run(workdir)
  cache = workdir / f"samples_step{int(state.step)}_seed{seed}_per{per_class}.npy"
  if cache.exists():
    return np.load(cache)
  model = create_model(config.model)
  sampler = ImageSampler(model, flow.make_objective(config.objective), config.sample, (8, 8, 1))
  out = images.to_uint8(sampler(state.ema_params, class_labels(per_class),
                                jax.random.PRNGKey(seed)))
  np.save(cache, out)
  return out


def loss_curve(workdir: Path) -> tuple[list[int], list[float]]:
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [m["step"] for m in lines], [m["loss"] for m in lines]


def markdown(results: dict) -> str:
  rows = ["| model | Gflops | params (M) | final loss (window) | train wall clock | accuracy |",
          "|---|---|---|---|---|---|"]
  notes = []
  for name, r in results["runs"].items():
    rows.append(f"| {name} | {r['gflops']:.4f} | {r['params'] / 1e6:.2f} | {r['loss']:.4f} "
                f"({r['log_every']} steps) | {r['seconds']:.0f} s | {r['accuracy']:.1%} |")
    if r.get("reused_from"):
      notes.append(f"{name}: the run of {r['reused_from']} (the same config and steps, trained "
                   "earlier, logged every 100 steps), reused rather than retrained; its wall "
                   "clock is from that run, when the machine was less loaded.")
  n = results["per_class"] * NUM_CLASSES
  return "\n".join([
      "# U-Net (three ways of injecting time and class) vs DiT on 8x8 digits",
      "",
      (f"Each model trained {results['steps']} steps, batch 64, flow matching, AdamW 1e-3 cosine "
      "(the quickstart's settings), on the bundled 8x8 digits; 2-core CPU shared with other "
      "jobs (wall clock includes data loading, compilation and one sample grid). Gflops: "
      "analytic forward of one 8x8x1 image, one multiply-add = one flop. Final loss: mean "
      "over the last logging window (see the table). Accuracy: % of "
      f"{n} EMA samples ({results['per_class']} per digit; {results['sampler']}, seed "
      f"{results['seed']}) that an RBF SVM fitted on the real training digits reads as the "
      f"requested digit (the classifier scores {results['classifier_test_accuracy']:.1%} on "
      "the real test digits; chance 10%)."),
      "",
      *rows,
      "",
      *[f"- {note}" for note in notes],
      "",
  ])


def plot(results: dict, samples: dict, path: Path):
  """Loss curves (left) and one grid per model: rows digits 0-9, SHOWN_PER_CLASS samples."""
  names = list(results["runs"])
  fig, axs = plt.subplots(1, 1 + len(names), figsize=(4 + 2.6 * len(names), 4),
                          gridspec_kw=dict(width_ratios=[1.6] + [1] * len(names)))
  for name in names:
    steps, losses = results["runs"][name]["curve"]
    axs[0].plot(steps, losses, label=name)
  axs[0].set(xlabel="step", ylabel="training loss (flow matching)", ylim=(0.3, 0.9))
  axs[0].grid(True, alpha=0.3)
  axs[0].legend(fontsize=8)
  per_class = results["per_class"]
  for ax, name in zip(axs[1:], names, strict=True):
    by_class = samples[name][..., 0].reshape(NUM_CLASSES, per_class, 8, 8)
    ax.imshow(tile(by_class[:, :SHOWN_PER_CLASS].reshape(-1, 8, 8), NUM_CLASSES), cmap="gray",
              vmin=0, vmax=255, interpolation="nearest")
    ax.set_title(f"{name}\n{results['runs'][name]['accuracy']:.0%} read correctly", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=1000, help="training steps per model")
  parser.add_argument("--workdir", default="runs/unet_vs_dit", help="one run directory each")
  parser.add_argument("--out", default="experiments/results")
  parser.add_argument("--per-class", type=int, default=20, help="samples per digit")
  parser.add_argument("--seed", type=int, default=0, help="sampling key")
  args = parser.parse_args()
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)

  classifier, test_accuracy, _, _ = fit_classifier()
  sample_config = load_config(RUNS["DiT (quickstart)"]).sample
  results = dict(steps=args.steps, per_class=args.per_class, seed=args.seed,
                 classifier_test_accuracy=test_accuracy, runs={},
                 sampler=f"{sample_config.method}, {sample_config.steps} steps, guidance "
                         f"{sample_config.cfg_scale}")
  samples = {}
  for name, spec in RUNS.items():
    workdir = run_dir(Path(args.workdir), name)
    timing = train_run(spec, args.steps, workdir)
    samples[name] = sample_run(workdir, args.per_class, args.seed)
    gflops, params = analytic_counts(load_config(spec))
    curve = loss_curve(workdir)
    results["runs"][name] = dict(
        gflops=gflops, params=params, seconds=timing["seconds"], curve=curve,
        reused_from=timing.get("reused_from"), log_every=curve[0][1] - curve[0][0],
        loss=final_metrics(workdir)["loss"],
        steps_per_s=final_metrics(workdir)["steps_per_s"],
        **score(classifier, samples[name], class_labels(args.per_class)))
    print(name, {k: v for k, v in results["runs"][name].items() if k != "curve"})

  table = markdown(results)
  (out / "unet_vs_dit.md").write_text(table)
  (out / "unet_vs_dit.json").write_text(json.dumps(results, indent=2) + "\n")
  plot(results, samples, out / "unet_vs_dit.png")
  print(table)


if __name__ == "__main__":
  main()
