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
This script holds what is specific to the study. `prepare` writes the held-out test captions,
their objects and the training captions of the sweep's data set to one npz. `report` samples
each finished run of the sweep for the test captions (EMA weights, Euler, classifier-free
guidance, the same starting noise for every model) and checks the samples exactly: in each
captioned cell the dominant palette colour and a shape classifier (fill ratio of the colour's
bounding box: square ~1, circle ~0.785, triangle ~0.5) are compared with the caption; empty
cells must stay empty. It adds a caption-blind baseline (real images scored against the wrong
captions), a guidance sweep when --cfg-scales names several scales, and a learning curve of
the accuracies from the checkpoints the runs kept. Samples are cached in the run directories.

    dit-jax sweep --config configs/sweeps/mmdit_composition.py --workdir runs/sweeps/mmdit \\
        --parallel 2
    python experiments/mmdit_composition.py prepare --out runs/mmdit_data      # seconds
    python experiments/mmdit_composition.py report --data runs/mmdit_data/data.npz \\
        --sweep-dir runs/sweeps/mmdit --out experiments/results

On a 2-core CPU two runs train side by side at one XLA thread each
(XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"); see README.
"""
import argparse
import functools
import json
from pathlib import Path

import numpy as np

NUM_TEST = 512
SWEEP = Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "mmdit_composition.py"


# ---------------------------------------------------------------------------------------------
# prepare: the sweep's captioned shapes -> one compressed npz (test images and objects, tokens)

def split_arrays(split: str, count: int, resolution: int, fixed_layout: bool) -> dict:
  """`count` captioned shapes examples (2-3 objects) of one split: images, captions and the
  per-object arrays (shape, colour, row, col; padded with -1) that `check` reads."""
  from dit_jax.data import shapes
  config = shapes.ShapesConfig(name="multi", resolution=resolution, min_objects=2,
                               max_objects=3, fixed_layout=fixed_layout)
  return config_arrays(config, split, count)


def config_arrays(config, split: str, count: int) -> dict:
  """The first `count` examples of `split` of a shapes builder config, as `split_arrays`."""
  from dit_jax.data import shapes
  exs = [shapes.example(config, split, i) for i in range(count)]
  out = {f"{split}_images": np.stack([e["image"] for e in exs]),
         f"{split}_captions": np.array([e["caption"] for e in exs])}
  for key in ("shape", "colour", "row", "col"):
    out[f"{split}_{key}"] = np.stack([e["objects"][key] for e in exs])
  return out


def shapes_config(data_name: str):
  """The builder config of data.name 'shapes/NAME': the examples the runs trained on."""
  from dit_jax.data import shapes
  family, _, name = data_name.partition("/")
  configs = {c.name: c for c in shapes.Shapes.BUILDER_CONFIGS}
  if family != "shapes" or name not in configs:
    raise ValueError(f"data.name={data_name!r}: the checker needs a shapes config, one of "
                     f"{sorted(configs)}")
  return configs[name]


def prepare(args):
  from dit_jax import sweep
  from dit_jax.data.tokenizers import make_tokenizer
  data_config = sweep.load(args.sweep)[0].data
  config = shapes_config(data_config.name)
  tok = make_tokenizer(data_config.text_tokenizer)
  out = {}
  for split, count in (("train", config.num_train), ("test", min(NUM_TEST, config.num_test))):
    out.update(config_arrays(config, split, count))
    out[f"{split}_tokens"], out[f"{split}_mask"] = tok.encode_batch(
        list(out[f"{split}_captions"]), data_config.text_length)
  for key in ("captions", "images", "shape", "colour", "row", "col"):
    del out[f"train_{key}"]  # the report only asks whether a test caption was trained on
  out["vocab_size"] = np.int32(tok.vocab_size)
  out["layout"] = np.array("fixed" if config.fixed_layout else "jittered")
  out["data_name"] = np.array(data_config.name)
  Path(args.out).mkdir(parents=True, exist_ok=True)
  np.savez_compressed(Path(args.out) / "data.npz", **out)
  print(f"wrote {args.out}/data.npz: {data_config.name}, {config.num_train} train captions, "
        f"{len(out['test_tokens'])} test examples")


# ---------------------------------------------------------------------------------------------
# sampling the sweep's runs

def sample(model, params, data, sample_config, n: int, cfg_scale: float, seed: int):
  """The first n test captions -> (n, H, W, 3) uint8 samples (the run's sampler with guidance
  cfg_scale; the same starting noise for every model of a seed)."""
  import jax
  import jax.numpy as jnp
  from dit_jax import images
  cond = {"text_tokens": jnp.asarray(data["test_tokens"][:n]),
          "text_mask": jnp.asarray(data["test_mask"][:n])}
  x0 = jax.random.normal(jax.random.PRNGKey(seed + 1),
                         (cond["text_mask"].shape[0], *data["test_images"].shape[1:]))
  run = _sampler(model, sample_config.method, sample_config.steps, cfg_scale)
  return images.to_uint8(np.asarray(run(params, x0, cond)))


@functools.cache  # one compiled sampler per model and scale, reused for every checkpoint
def _sampler(model, method: str, steps: int, cfg_scale: float):
  import jax
  from dit_jax import flow
  from dit_jax.models import model_fn
  sampler = flow.make_sampler({"method": method, "steps": steps, "cfg_scale": cfg_scale})
  return jax.jit(lambda p, x, c: sampler(model_fn(model, p), None, x, c, model.null_condition(c)))


def run_samples(run, data, n: int, cfg_scale: float, step: int | None = None) -> np.ndarray:
  """Samples of the first n test captions from the EMA weights of checkpoint `step` (default:
  the newest) of a sweep run, cached in its directory."""
  from dit_jax import train
  from dit_jax.models import create_model
  if step is None:
    step = json.loads((run.workdir / "result.json").read_text())["steps"]
  cache = run.workdir / "composition" / f"step{step}_cfg{cfg_scale:g}_n{n}.npy"
  if cache.exists():
    return np.load(cache)
  vocab = json.loads((run.workdir / "config.json").read_text())["model"]["vocab_size"]
  if int(data["vocab_size"]) != vocab:
    raise ValueError(f"{run.workdir}: vocabulary {vocab} != the data's "
                     f"{int(data['vocab_size'])}; prepare the data of this sweep")
  config, state = train.load_run(run.workdir, step=step)
  out = sample(create_model(config.model), state.ema_params, data, config.sample, n, cfg_scale,
               run.seed)
  cache.parent.mkdir(exist_ok=True)
  np.save(cache, out)
  return out


def kept_steps(run) -> list[int]:
  """Checkpointed steps of a run, oldest first."""
  ckpts = run.workdir / "checkpoints"
  return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())


def run_entry(run, data, args) -> dict:
  """What the tables and the curve need of one finished run: counts, settings, losses and the
  checker's accuracies at the kept checkpoints before the last."""
  from dit_jax.training_log import read_history
  info = json.loads((run.workdir / "result.json").read_text())
  config = json.loads((run.workdir / "config.json").read_text())
  losses = [(r["step"], r["loss"]) for r in read_history(run.workdir) if "loss" in r]
  curve = [dict(step=step, **check(run_samples(run, data, args.curve_samples,
                                               args.cfg_scales[0], step), data))
           for step in kept_steps(run) if step < info["steps"]]
  return dict(variant=run.name, seed=run.seed, params=info["params"], gflops=info["gflops"],
              train_seconds=info["seconds"], steps=info["steps"], batch=info["batch_size"],
              lr=config["optim"]["lr"], sample_steps=config["sample"]["steps"],
              cfg_scale=args.cfg_scales[0], cfg_scales=args.cfg_scales,
              final_loss=float(np.mean([loss for _, loss in losses[-5:]])), losses=losses,
              curve=curve, device=info["devices"])


# ---------------------------------------------------------------------------------------------
# report: exact checker, table, figure

def classify_cell(cell_HW3: np.ndarray, palette: np.ndarray, min_pixels: int = 4):
  """(colour id or -1, shape id or -1) of the dominant palette colour in a cell.

  Each pixel is assigned to the nearest of background + palette (within a distance of 96 of
  255-scale RGB; others count as noise); the shape of the dominant colour's pixels comes from
  the fill ratio of their bounding box.
  """
  refs = np.concatenate([np.zeros((1, 3)), palette.astype(np.float64)])
  dist = np.linalg.norm(cell_HW3[:, :, None, :].astype(np.float64) - refs, axis=-1)
  nearest = np.where(dist.min(-1) < 96, dist.argmin(-1), -1)  # 0 background, 1.. palette
  counts = np.bincount(nearest[nearest > 0].ravel(), minlength=len(refs))[1:]
  if counts.max(initial=0) < min_pixels:
    return -1, -1
  colour = int(counts.argmax())
  ys, xs = np.nonzero(nearest == colour + 1)
  fill = len(ys) / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
  shape = 1 if fill > 0.9 else (0 if fill > 0.66 else 2)  # SHAPES = circle, square, triangle
  return colour, shape


def check_images(samples, data, split="test") -> dict[str, np.ndarray]:
  """Per-image counts: captioned objects, how many have the right colour / shape / both,
  empty cells and how many stayed empty, and whether the whole image is right."""
  from dit_jax.data.shapes import GRID, PALETTE, cell_bounds
  n = min(len(samples), len(data[f"{split}_shape"]))
  keys = ("objects", "colour", "shape", "object", "empty_total", "empty_cells", "all_objects")
  out = {key: np.zeros(n, np.int64) for key in keys}
  for i, img in enumerate(samples[:n]):
    wanted = {(int(r), int(c)): (int(s), int(k)) for s, k, r, c in zip(
        data[f"{split}_shape"][i], data[f"{split}_colour"][i], data[f"{split}_row"][i],
        data[f"{split}_col"][i], strict=True) if s >= 0}
    for r in range(GRID):
      for c in range(GRID):
        res = img.shape[0]
        (y0, y1), (x0, x1) = cell_bounds(r, res), cell_bounds(c, res)
        colour, shape = classify_cell(img[y0:y1, x0:x1], PALETTE)
        if (r, c) in wanted:
          s, k = wanted[(r, c)]
          out["objects"][i] += 1
          out["colour"][i] += colour == k
          out["shape"][i] += shape == s
          out["object"][i] += colour == k and shape == s
        else:
          out["empty_total"][i] += 1
          out["empty_cells"][i] += colour == -1
    out["all_objects"][i] = (out["object"][i] == out["objects"][i]
                             and out["empty_cells"][i] == out["empty_total"][i])
  return out


def accuracies(per_image: dict[str, np.ndarray], index=slice(None)) -> dict[str, float]:
  """Fractions of objects (colour, shape, object), empty cells and whole images that are right,
  over the images `index` selects."""
  sums = {key: float(np.sum(v[index])) for key, v in per_image.items()}
  return dict(colour=sums["colour"] / sums["objects"], shape=sums["shape"] / sums["objects"],
              object=sums["object"] / sums["objects"],
              empty_cells=sums["empty_cells"] / sums["empty_total"],
              all_objects=sums["all_objects"] / len(per_image["objects"][index]))


def check(samples, data, split="test") -> dict[str, float]:
  """Per-object and per-image accuracy of samples against the test captions' objects."""
  return accuracies(check_images(samples, data, split))


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
  from dit_jax import images, sweep
  data = dict(np.load(args.data))
  base, spec = sweep.load(args.sweep)
  if str(data.get("data_name", base.data.name)) != base.data.name:
    raise SystemExit(f"{args.data} holds {data['data_name']}, the sweep trained on "
                     f"{base.data.name}: run `prepare --sweep {args.sweep}`")
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
  n = min(args.num_samples, len(data["test_tokens"]))
  real = data["test_images"][:n]  # the captions the models were sampled for
  # A perfect generator that ignores the caption: real images of the wrong captions.
  per_image = {"real test images (checker sanity)": check_images(real, data),
               "caption-blind baseline": check_images(np.roll(real, 1, 0), data)}
  # Captions never seen in training: a model that memorised captions fails these.
  seen = {row.tobytes() for row in data["train_tokens"]}
  unseen = np.array([row.tobytes() not in seen for row in data["test_tokens"][:n]])
  scores = lambda v: dict(accuracies(v), all_objects_unseen=accuracies(v, unseen)["all_objects"])
  rows = [dict(variant=name, **scores(v)) for name, v in per_image.items()]
  grids, guidance = [real[:args.grid]], {}
  for run in finished:
    entry = run_entry(run, data, args)
    name = run.name + (f" (seed {run.seed})" if run.seed else "")
    by_scale = {scale: run_samples(run, data, n, scale) for scale in args.cfg_scales}
    samples = by_scale[args.cfg_scales[0]]
    per_image[name] = check_images(samples, data)
    rows.append(dict(entry, **scores(per_image[name]), variant=name))
    grids.append(samples[:args.grid])
    if len(args.cfg_scales) > 1:
      guidance[name] = {scale: check(by_scale[scale], data) for scale in sorted(args.cfg_scales)}
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
  res = data["test_images"].shape[1]
  first = rows[2]
  layout = str(data.get("layout", "jittered"))  # files written before --layout: jittered
  setup = (f"{n} held-out captions ({unseen.sum()} of them absent from the training set) of "
           f"shapes with 2-3 objects ({layout} layout) at {res}x{res}; batch "
           f"{first['batch']}, learning rate {first['lr']}; {base.sample.method} "
           f"{first['sample_steps']} steps with guidance {first['cfg_scale']}; Gflops: "
           f"analytic forward of one image; device {first['device']}.")
  if "dit_pooled" in per_image:
    table += "\n" + difference_table(per_image, "dit_pooled")
  if guidance:
    table += "\n" + guidance_table(guidance)
  (out / "mmdit_composition.md").write_text(f"{setup}\n\n{table}")
  (out / "mmdit_composition.json").write_text(json.dumps(
      [{k: v for k, v in r.items() if k != "losses"} for r in rows], indent=1))
  grid = images.make_grid(np.concatenate(grids), rows=len(grids))
  images.save_png(grid, out / "mmdit_composition.png", upscale=3)
  if any(r.get("curve") for r in rows):
    plot_curves(rows[2:], rows[1], out / "mmdit_composition_curve.png")
  print(setup)
  print(table)
  print("rows: real test images, " + ", ".join(r["variant"] for r in rows[2:]))
  print("captions:", *data["test_captions"][:args.grid], sep="\n  ")


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
  """Object and whole-image accuracy of each variant against training steps."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  keys = (("object", "object right (colour + shape)"), ("all_objects", "whole image right"))
  fig, axs = plt.subplots(1, len(keys), figsize=(10, 3.8))
  for ax, (key, title) in zip(axs, keys, strict=True):
    for entry in logs:
      steps = [c["step"] for c in entry["curve"]] + [entry["steps"]]
      ax.plot(steps, [c[key] for c in entry["curve"]] + [entry[key]], marker=".",
              label=entry["variant"])
    ax.axhline(blind[key], color="gray", linestyle="--", label="caption-blind")
    ax.set(xlabel="training step", ylabel="fraction of test captions", title=title, ylim=(0, 1))
    ax.grid(True, alpha=0.3)
  axs[0].legend(fontsize=8)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("prepare")
  p.add_argument("--sweep", default=str(SWEEP), help="the sweep file whose data to prepare")
  p.add_argument("--out", default="runs/mmdit_data")
  p.set_defaults(func=prepare)
  p = sub.add_parser("report")
  p.add_argument("--data", default="runs/mmdit_data/data.npz")
  p.add_argument("--sweep", default=str(SWEEP), help="the sweep file the runs came from "
                 "(with its argument, e.g. ...mmdit_composition.py:gpu)")
  p.add_argument("--sweep-dir", required=True, help="the sweep's --workdir")
  p.add_argument("--out", default="experiments/results")
  p.add_argument("--grid", type=int, default=10)
  p.add_argument("--num-samples", type=int, default=NUM_TEST, help="test captions to sample")
  p.add_argument("--cfg-scales", type=lambda s: [float(v) for v in s.split(",")],
                 default=[3.0], help="guidance scales to sample at (comma-separated); the "
                 "first is the table's and the learning curve's, the others a sweep")
  p.add_argument("--curve-samples", type=int, default=64, help="test captions sampled at "
                 "each kept checkpoint before the last (the learning curve)")
  p.set_defaults(func=report)
  args = parser.parse_args()
  args.func(args)


if __name__ == "__main__":
  main()
