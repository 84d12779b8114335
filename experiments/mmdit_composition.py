"""Why MM-DiT exists: compositional prompts on the captioned `shapes` data set.

configs/sweeps/mmdit_composition.py trains five text-conditioned models of (nearly) equal
forward FLOPs (configs/mmdit.py) with flow matching on shapes/multi_fixed_24: 24x24 images of
2-3 coloured shapes on a 3x3 grid, each filling 80% of its cell, centred, so the image is a
function of the caption ("a red circle at the top left and a blue square in the centre") and
the checker measures binding (right colour and shape in the right place), not size or
placement:

  dit_pooled      DiT, pooled text only (added to the timestep vector, adaLN-Zero)
  dit_cross       DiT, adaLN-Zero from t + pooled text and cross-attention to the text tokens
  mmdit_double    MM-DiT, double-stream blocks (SD3)
  mmdit_single    single-stream blocks (Z-Image)
  mmdit_hybrid    double- then parallel single-stream blocks (FLUX)

All share the same small word-level text encoder, trained with the model (10% caption dropout).
During training the runs' composition evaluator (dit_jax.eval.composition) checks samples of
128 test captions every 500 steps: the learning curve. This script samples each finished run
for the first --num-samples test captions (EMA weights, the run's sampler, the same starting
noise for every model of a seed; cached in the run directories), checks them exactly, and adds
a caption-blind baseline (real images scored against the wrong captions), paired-bootstrap
differences from pooled adaLN, a guidance sweep when --cfg-scales names several scales, the
sample grid and the learning curves.

    dit-jax sweep --config configs/sweeps/mmdit_composition.py --workdir runs/sweeps/mmdit \\
        --parallel 2
    python experiments/mmdit_composition.py --sweep-dir runs/sweeps/mmdit \\
        --cfg-scales 3,1.5,5 --out experiments/results

On a 2-core CPU two runs train side by side at one XLA thread each
(XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"); see README.
"""
import argparse
import json
from pathlib import Path

import numpy as np

from dit_jax.eval.composition import accuracies, check_images, scores

NUM_TEST = 256
SWEEP = Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "mmdit_composition.py"


def held_out(base, n: int) -> dict:
  """The first n test examples of the sweep's data: their objects, images, caption tokens
  (the run's tokenizer) and which captions no training example has."""
  from dit_jax.data import shapes
  from dit_jax.data.tokenizers import caption_condition
  from dit_jax.eval import composition
  config = composition.shapes_config(base.data.name)
  objects = composition.split_objects(config, "test", min(n, config.num_test))
  images = np.stack([shapes.example(config, "test", i)["image"]
                     for i in range(len(objects["captions"]))])
  return dict(objects=objects, images=images,
              cond=caption_condition(base.data, objects["captions"]),
              unseen=composition.unseen(objects["captions"], config),
              layout="fixed" if config.fixed_layout else "jittered")


def run_samples(run, test: dict, cfg_scale: float) -> np.ndarray:
  """uint8 samples of the test captions from the final EMA weights of a sweep run, cached in
  its directory; every model of a seed starts from the same noise."""
  import jax
  from dit_jax import flow
  from dit_jax.models import create_model
  from dit_jax.sampling.sampler import ImageSampler, sample_in_batches
  from dit_jax.sampling.runs import load_run
  steps = json.loads((run.workdir / "result.json").read_text())["steps"]
  n = len(test["images"])
  cache = run.workdir / "composition" / f"step{steps}_cfg{cfg_scale:g}_n{n}.npy"
  if cache.exists():
    return np.load(cache)
  config, state = load_run(run.workdir)
  sampler = ImageSampler(create_model(config.model), flow.make_objective(config.objective),
                         config.sample, test["images"].shape[1:])
  out = np.concatenate(list(sample_in_batches(sampler, state.ema_params, test["cond"], n,
                                              jax.random.PRNGKey(run.seed + 1), cfg_scale)))
  cache.parent.mkdir(exist_ok=True)
  np.save(cache, out)
  return out


def run_entry(run, cfg_scale: float) -> dict:
  """What the tables and the curves need of one finished run: counts, settings, losses and the
  composition evaluator's scores during training."""
  from dit_jax.engine.run_log import read_history
  info = json.loads((run.workdir / "result.json").read_text())
  config = json.loads((run.workdir / "config.json").read_text())
  history = read_history(run.workdir)
  losses = [(r["step"], r["loss"]) for r in history if "loss" in r]
  curve = [dict(step=r["step"], object=r["eval/object"], all_objects=r["eval/all_objects"])
           for r in history if "eval/object" in r]
  return dict(variant=run.name, seed=run.seed, params=info["params"], gflops=info["gflops"],
              train_seconds=info["seconds"], steps=info["steps"], batch=info["batch_size"],
              lr=config["optim"]["lr"], sample_steps=config["sample"]["steps"],
              cfg_scale=cfg_scale, final_loss=float(np.mean([loss for _, loss in losses[-5:]])),
              curve=curve, device=info["devices"])


def paired_difference(a: dict, b: dict, key: str, resamples: int = 2000,
                      seed: int = 0) -> tuple[float, float, float]:
  """Accuracy `key` of a minus that of b on the same captions and starting noise, with a 95%
  interval from a paired bootstrap over test images (objects of one image are not
  independent, images are)."""
  rng = np.random.default_rng(seed)
  n = len(a["objects"])
  diffs = [accuracies(a, idx)[key] - accuracies(b, idx)[key]
           for idx in rng.integers(0, n, (resamples, n))]
  lo, hi = np.percentile(diffs, [2.5, 97.5])
  return accuracies(a)[key] - accuracies(b)[key], float(lo), float(hi)


def report(args):
  from dit_jax.sampling import images
  from dit_jax.studies import sweep
  base, spec = sweep.load(args.sweep)
  runs = sweep.expand(spec, args.sweep_dir)
  finished = [r for r in runs if (r.workdir / "result.json").exists()]
  if len(finished) < len(runs):
    print("not finished, left out: " + ", ".join(f"{r.name} seed {r.seed}" for r in runs
                                                 if r not in finished))
  if not finished:
    raise SystemExit(f"no finished run in {args.sweep_dir}: run `dit-jax sweep --config "
                     f"{args.sweep} --workdir {args.sweep_dir}` first")
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  test = held_out(base, args.num_samples)
  real, objects, n = test["images"], test["objects"], len(test["images"])
  # A perfect generator that ignores the caption: real images of the wrong captions.
  per_image = {"real test images (checker sanity)": check_images(real, objects),
               "caption-blind baseline": check_images(np.roll(real, 1, 0), objects)}
  rows = [dict(variant=name, **scores(v, test["unseen"])) for name, v in per_image.items()]
  grids, guidance = [real[:args.grid]], {}
  for run in finished:
    name = run.name + (f" (seed {run.seed})" if run.seed else "")
    by_scale = {scale: run_samples(run, test, scale) for scale in args.cfg_scales}
    samples = by_scale[args.cfg_scales[0]]
    per_image[name] = check_images(samples, objects)
    rows.append(dict(run_entry(run, args.cfg_scales[0]), **scores(per_image[name],
                                                                  test["unseen"]), variant=name))
    grids.append(samples[:args.grid])
    if len(args.cfg_scales) > 1:
      guidance[name] = {scale: accuracies(check_images(by_scale[scale], objects))
                        for scale in sorted(args.cfg_scales)}
  header = ("| model | Gflops | params | steps | final loss | colour | shape "
            "| object (colour+shape) | empty cells | all objects | all objects, unseen captions |\n"
            + "|---" * 11 + "|\n")
  fmt = lambda r, k, f: f.format(r[k]) if k in r else "-"
  table = header + "".join(
      f"| {r['variant']} | {fmt(r, 'gflops', '{:.4f}')} | {fmt(r, 'params', '{:,}')} | "
      f"{fmt(r, 'steps', '{}')} | "
      f"{fmt(r, 'final_loss', '{:.4f}')} | {r['colour']:.3f} | {r['shape']:.3f} | "
      f"{r['object']:.3f} | {r['empty_cells']:.3f} | {r['all_objects']:.3f} | "
      f"{r['all_objects_unseen']:.3f} |\n" for r in rows)
  res, first = real.shape[1], rows[2]
  setup = (f"{n} held-out captions ({test['unseen'].sum()} of them absent from the training "
           f"set) of shapes with 2-3 objects ({test['layout']} layout) at {res}x{res}; batch "
           f"{first['batch']}, learning rate {first['lr']}; {base.sample.method} "
           f"{first['sample_steps']} steps with guidance {first['cfg_scale']}; Gflops: "
           f"analytic forward of one image; device {first['device']}.")
  if "dit_pooled" in per_image:
    table += "\n" + difference_table(per_image, "dit_pooled")
  if guidance:
    table += "\n" + guidance_table(guidance)
  (out / "mmdit_composition.md").write_text(f"{setup}\n\n{table}")
  (out / "mmdit_composition.json").write_text(json.dumps(rows, indent=1))
  grid = images.make_grid(np.concatenate(grids), rows=len(grids))
  images.save_png(grid, out / "mmdit_composition.png", upscale=3)
  if any(r.get("curve") for r in rows):
    plot_curves(rows[2:], rows[1], out / "mmdit_composition_curve.png")
  print(setup)
  print(table)
  print("rows: real test images, " + ", ".join(r["variant"] for r in rows[2:]))
  print("captions:", *objects["captions"][:args.grid], sep="\n  ")


def difference_table(per_image: dict, reference: str) -> str:
  """Each model's colour and object accuracy minus the reference's on the same test captions,
  with paired-bootstrap 95% intervals: an interval above 0 means it binds words to places
  better than the reference beyond sampling noise."""
  lines = [f"| minus {reference} (95% interval) | colour | object |", "|---|---|---|"]
  for name, per in per_image.items():
    if name == reference or name.startswith("real"):
      continue
    cells = []
    for key in ("colour", "object"):
      diff, lo, hi = paired_difference(per, per_image[reference], key)
      cells.append(f"{diff:+.3f} [{lo:+.3f}, {hi:+.3f}]")
    lines.append(f"| {name} | {' | '.join(cells)} |")
  return "\n".join(lines) + "\n"


def guidance_table(sweep: dict) -> str:
  """Object accuracy / whole-image accuracy of each variant at each guidance scale."""
  scales = sorted({scale for by_scale in sweep.values() for scale in by_scale})
  head = " | ".join(f"guidance {scale:g}" for scale in scales)
  lines = [f"| model (object / all objects) | {head} |", "|---" * (len(scales) + 1) + "|"]
  for variant, by_scale in sweep.items():
    cells = " | ".join(f"{by_scale[scale]['object']:.3f} / {by_scale[scale]['all_objects']:.3f}"
                       if scale in by_scale else "-" for scale in scales)
    lines.append(f"| {variant} | {cells} |")
  return "\n".join(lines) + "\n"


def plot_curves(logs: list[dict], blind: dict, path: Path):
  """Object and whole-image accuracy of each variant against training steps (the runs'
  composition evaluator: 128 test captions from one fixed noise per run)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  keys = (("object", "object right (colour + shape)"), ("all_objects", "whole image right"))
  fig, axs = plt.subplots(1, len(keys), figsize=(10, 3.8))
  for ax, (key, title) in zip(axs, keys, strict=True):
    for entry in logs:
      ax.plot([c["step"] for c in entry["curve"]], [c[key] for c in entry["curve"]],
              marker=".", label=entry["variant"])
    ax.axhline(blind[key], color="gray", linestyle="--", label="caption-blind")
    ax.set(xlabel="training step", ylabel="fraction of test captions", title=title, ylim=(0, 1))
    ax.grid(True, alpha=0.3)
  axs[0].legend(fontsize=8)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sweep", default=str(SWEEP), help="the sweep file the runs came from "
                      "(with its argument, e.g. ...mmdit_composition.py:gpu)")
  parser.add_argument("--sweep-dir", required=True, help="the sweep's --workdir")
  parser.add_argument("--out", default="experiments/results")
  parser.add_argument("--grid", type=int, default=10)
  parser.add_argument("--num-samples", type=int, default=NUM_TEST, help="test captions")
  parser.add_argument("--cfg-scales", type=lambda s: [float(v) for v in s.split(",")],
                      default=[3.0], help="guidance scales to sample at (comma-separated); "
                      "the first is the table's, the others a sweep")
  report(parser.parse_args())


if __name__ == "__main__":
  main()
