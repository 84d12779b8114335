"""Why MM-DiT exists: compositional prompts on the captioned `shapes` data set.

Five text-conditioned models of (nearly) equal forward FLOPs are trained with flow matching on
24x24 (or 32x32) images of 2-3 coloured shapes on a 3x3 grid, with captions such as "a red
circle at the top left and a blue square in the centre". By default (`prepare --layout fixed`)
every object fills 80% of its cell, centred, so the image is a function of the caption and the
checker measures binding (right colour and shape in the right place), not size or placement:

  dit_pooled      DiT, pooled text only (added to the timestep vector, adaLN-Zero)
  dit_cross       DiT, adaLN-Zero from t + pooled text and cross-attention to the text tokens
  mmdit_double    MM-DiT, double-stream blocks (SD3)
  mmdit_single    single-stream blocks (Z-Image)
  mmdit_hybrid    double- then parallel single-stream blocks (FLUX)

All share the same small word-level text encoder, trained with the model (10% caption dropout).
Samples for held-out test captions are checked exactly: in each captioned cell the dominant
palette colour and a shape classifier (fill ratio of the colour's bounding box: square ~1,
circle ~0.785, triangle ~0.5) are compared with the caption; empty cells must stay empty.
The report adds a caption-blind baseline (real images scored against the wrong captions), a
guidance sweep when `train --cfg-scales` named several scales and, when `train --eval-every N`
recorded one, a learning curve of the accuracies. Samples come from EMA weights with a warm-up,
so short runs do not keep a share of the (zero-output) initial weights.

    python experiments/mmdit_composition.py prepare --out runs/mmdit_data      # seconds
    python experiments/mmdit_composition.py train --data runs/mmdit_data/data.npz \\
        --out runs/mmdit_run --steps 6000                                       # GPU: minutes
    python experiments/mmdit_composition.py report --data runs/mmdit_data/data.npz \\
        --samples runs/mmdit_run --out experiments/results

`train` runs each variant on the library's engine (`dit_jax.engine`: the same loop, state,
EMA with warm-up, Orbax checkpoints and resume as `dit-jax train`) in --out/<variant>/, over
the in-memory arrays of data.npz; `prepare` and `report` use the `shapes` generator. On a 2-core
CPU two variants train side by side at 0.3-0.6 s/step each (batch 64, one XLA thread each:
XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"); see README.
"""
import argparse
import functools
import json
import time
from pathlib import Path

import numpy as np

NUM_TEST = 512
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "mmdit.py"


def _variants():
  """configs/mmdit.py (plain Python apart from its get_config): the variant table."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("mmdit_config", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def build_model(variant: str, vocab_size: int, size: str = "cpu"):
  """One of configs/mmdit.py's VARIANTS at one of its SIZES (same fields as the train config)."""
  from dit_jax.models import create_model
  fields = _variants().model_fields(variant, size)
  if fields["vocab_size"] != vocab_size:
    raise ValueError(f"data vocabulary {vocab_size} != configs/mmdit.py SHAPES_VOCAB")
  return create_model(fields)


# ---------------------------------------------------------------------------------------------
# prepare: captioned shapes -> one compressed npz (images, tokens, test objects)

def split_arrays(split: str, count: int, resolution: int, fixed_layout: bool) -> dict:
  """`count` captioned shapes examples (2-3 objects) of one split: images, captions and the
  per-object arrays (shape, colour, row, col; padded with -1) that `check` reads."""
  from dit_jax.data import shapes
  config = shapes.ShapesConfig(name="multi", resolution=resolution, min_objects=2,
                               max_objects=3, fixed_layout=fixed_layout)
  exs = [shapes.example(config, split, i) for i in range(count)]
  out = {f"{split}_images": np.stack([e["image"] for e in exs]),
         f"{split}_captions": np.array([e["caption"] for e in exs])}
  for key in ("shape", "colour", "row", "col"):
    out[f"{split}_{key}"] = np.stack([e["objects"][key] for e in exs])
  return out


def prepare(args):
  from dit_jax.data.tokenizers import make_tokenizer
  tok = make_tokenizer("words:shapes")
  out = {}
  for split, count in (("train", args.num_train), ("test", NUM_TEST)):
    out.update(split_arrays(split, count, args.resolution, args.layout == "fixed"))
    out[f"{split}_tokens"], out[f"{split}_mask"] = tok.encode_batch(
        list(out[f"{split}_captions"]), _variants().TEXT_LENGTH)
  del out["train_captions"]
  out["vocab_size"] = np.int32(tok.vocab_size)
  out["layout"] = np.array(args.layout)
  Path(args.out).mkdir(parents=True, exist_ok=True)
  np.savez_compressed(Path(args.out) / "data.npz", **out)
  print(f"wrote {args.out}/data.npz: {args.num_train} train, {NUM_TEST} test examples")


# ---------------------------------------------------------------------------------------------
# train: each variant, then sample the test captions

def gflops(model, resolution: int) -> float:
  """Forward Gflops of one example (multiply-adds), from XLA's cost analysis / 2."""
  from dit_jax.models import flops
  return flops.xla_flops(model, resolution, resolution, 3) / 2 / 1e9


def variant_config(variant: str, args):
  """configs/mmdit.py's config of a variant with this run's settings: the engine trains it."""
  from dit_jax.config import load_config
  config = load_config(f"{CONFIG}:{variant}@{args.size}")
  config.seed = args.seed
  config.data.batch_size = args.batch
  config.optim.update(lr=args.lr, warmup_steps=min(200, args.steps // 10), schedule="cosine",
                      end_lr_factor=0.05, grad_clip=1.0, weight_decay=0.0)
  # EMA with warm-up: a plain EMA of a short run still holds 0.999^steps of the zero-output
  # initial weights and leaves noise in the samples.
  config.train.update(steps=args.steps, log_every=100, checkpoint_every=500, sample_every=0,
                      ema_decay=args.ema, ema_warmup=True)
  return config


def train_variant(variant, data, args):
  """Trains one variant with the engine in --out/<variant>/ (checkpoints, metrics.jsonl;
  rerunning resumes), then samples the test captions from its EMA weights."""
  import jax
  from dit_jax import engine, flow, parallel, train
  from dit_jax.data.arrays import ArrayIterator
  config = variant_config(variant, args)
  vocab = int(data["vocab_size"])
  model = build_model(variant, vocab, args.size)
  images = data["train_images"].astype(np.float32) / 127.5 - 1.0
  arrays = {"image": images, "text_tokens": data["train_tokens"], "text_mask": data["train_mask"]}
  curve, eval_s = [], []

  def evaluate(step, state):  # learning curve: a few captions, EMA weights, checked exactly
    eval_start = time.time()
    scores = check(sample(model, state.ema_params, data, args, args.eval_samples,
                          args.cfg_scales[0]), data)
    curve.append(dict(step=step, **scores))
    eval_s.append(time.time() - eval_start)
    return {f"eval_{k}": v for k, v in scores.items()}
  hooks = [engine.Periodic("composition", args.eval_every, evaluate, at_end=False)] \
      if args.eval_every else []
  workdir = Path(args.out) / variant
  run = engine.Run(config=config, workdir=workdir, plan=parallel.ShardingPlan.create(config.mesh),
                   data=ArrayIterator(arrays, args.batch, seed=args.seed,
                                      process_index=jax.process_index(),
                                      process_count=jax.process_count()), hooks=hooks)
  start = time.time()
  task = train.denoiser_task(model, flow.make_objective(config.objective), images.shape[1:])
  state = engine.run(task, run)
  train_s = time.time() - start - sum(eval_s)  # evaluation is not training time
  samples = {scale: sample(model, state.ema_params, data, args, args.num_samples, scale)
             for scale in args.cfg_scales}
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").open()]
  losses = [(r["step"], r["loss"]) for r in rows if "loss" in r]
  n_params = sum(p.size for p in jax.tree.leaves(state.params))
  return samples, dict(variant=variant, seed=args.seed, params=int(n_params),
                       gflops=gflops(model, images.shape[1]), train_seconds=train_s,
                       steps=int(state.step), batch=args.batch, lr=args.lr,
                       sample_steps=args.sample_steps, cfg_scale=args.cfg_scales[0],
                       cfg_scales=args.cfg_scales,
                       final_loss=float(np.mean([loss for _, loss in losses[-5:]])), losses=losses,
                       curve=curve)


def sample(model, params, data, args, n: int, cfg_scale: float) -> np.ndarray:
  """The first n test captions -> (n, H, W, 3) uint8 samples (Euler, classifier-free
  guidance; the same starting noise for every model)."""
  import jax
  import jax.numpy as jnp
  from dit_jax import images
  cond = {"text_tokens": jnp.asarray(data["test_tokens"][:n]),
          "text_mask": jnp.asarray(data["test_mask"][:n])}
  x0 = jax.random.normal(jax.random.PRNGKey(args.seed + 1),
                         (cond["text_mask"].shape[0], *data["test_images"].shape[1:]))
  run = _sampler(model, args.sample_steps, cfg_scale)
  return images.to_uint8(np.asarray(run(params, x0, cond)))


@functools.cache  # one compiled sampler per model, reused by every evaluation
def _sampler(model, steps: int, cfg_scale: float):
  import jax
  from dit_jax import flow
  from dit_jax.models import model_fn
  sampler = flow.make_sampler({"method": "euler", "steps": steps, "cfg_scale": cfg_scale})
  return jax.jit(lambda p, x, c: sampler(model_fn(model, p), None, x, c, model.null_condition(c)))


def train(args):
  data = dict(np.load(args.data))
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  import jax
  print("devices:", jax.devices(), flush=True)
  logs = []
  for variant in args.variants.split(","):
    samples, log = train_variant(variant, data, args)  # EMA weights: --out/<variant>/checkpoints
    np.save(out / f"samples_{variant}.npy", samples[args.cfg_scales[0]])  # the table's samples
    for scale, arr in samples.items():
      np.save(out / f"samples_{variant}_cfg{scale:g}.npy", arr)
    logs.append(log)
    print(json.dumps({k: v for k, v in log.items() if k != "losses"}), flush=True)
    (out / "train_log.json").write_text(json.dumps(
        dict(device=str(jax.devices()[0]), logs=logs), indent=1))


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
  from dit_jax import images
  data = dict(np.load(args.data))
  # One train_log.json per run folder (variants may have been trained in parallel processes).
  order = _variants().VARIANTS
  entries, device = [], None
  for path in sorted(Path(args.samples).glob("**/train_log.json")):
    log = json.loads(path.read_text())
    device = log["device"]
    entries += [dict(e, folder=path.parent) for e in log["logs"]]
  entries.sort(key=lambda e: (order.index(e["variant"]), e.get("seed", 0)))
  log = dict(device=device, logs=entries)
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  first = log["logs"][0]
  n = len(np.load(first["folder"] / f"samples_{first['variant']}.npy", mmap_mode="r"))
  real = data["test_images"][:n]  # the captions the models were sampled for
  # A perfect generator that ignores the caption: real images of the wrong captions.
  per_image = {"real test images (checker sanity)": check_images(real, data),
               "caption-blind baseline": check_images(np.roll(real, 1, 0), data)}
  # Captions never seen in training: a model that memorised captions fails these.
  seen = {row.tobytes() for row in data["train_tokens"]}
  unseen = np.array([row.tobytes() not in seen for row in data["test_tokens"][:n]])
  scores = lambda v: dict(accuracies(v), all_objects_unseen=accuracies(v, unseen)["all_objects"])
  rows = [dict(variant=name, **scores(v)) for name, v in per_image.items()]
  grids, sweep = [real[:args.grid]], {}
  for entry in log["logs"]:
    folder, variant = entry.pop("folder"), entry["variant"]
    name = variant + (f" (seed {entry['seed']})" if entry.get("seed") else "")
    samples = np.load(folder / f"samples_{variant}.npy")
    per_image[name] = check_images(samples, data)
    rows.append(dict(entry, **scores(per_image[name]), variant=name))
    grids.append(samples[:args.grid])
    if len(entry.get("cfg_scales", [])) > 1:
      sweep[name] = {
          scale: check(np.load(folder / f"samples_{variant}_cfg{scale:g}.npy"), data)
          for scale in sorted(entry["cfg_scales"])}
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
  layout = str(data.get("layout", "jittered"))  # files written before --layout: jittered
  setup = (f"{n} held-out captions ({unseen.sum()} of them absent from the training set) of "
           f"shapes with 2-3 objects ({layout} layout) at {res}x{res}; batch {first['batch']}, "
           f"learning rate {first.get('lr', '?')}; Euler "
           f"{first.get('sample_steps', '?')} steps with guidance {first.get('cfg_scale', '?')}; "
           f"device {log['device']}.")
  if "dit_pooled" in per_image:
    table += "\n" + difference_table(per_image, "dit_pooled")
  if sweep:
    table += "\n" + guidance_table(sweep)
  (out / "mmdit_composition.md").write_text(f"{setup}\n\n{table}")
  (out / "mmdit_composition.json").write_text(json.dumps(
      [{k: v for k, v in r.items() if k != "losses"} for r in rows], indent=1))
  grid = images.make_grid(np.concatenate(grids), rows=len(grids))
  images.save_png(grid, out / "mmdit_composition.png", upscale=3)
  if any(r.get("curve") for r in rows):
    plot_curves(rows[2:], rows[1], out / "mmdit_composition_curve.png")
  print(setup)
  print(table)
  print("rows: real test images, " + ", ".join(e["variant"] for e in log["logs"]))
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
  p.add_argument("--out", default="runs/mmdit_data")
  p.add_argument("--num-train", type=int, default=20_000)
  p.add_argument("--resolution", type=int, default=24)
  p.add_argument("--layout", default="fixed", choices=("fixed", "jittered"),
                 help="objects 80%% of their cell and centred (the image is a function of the "
                      "caption), or of random size and place within the cell")
  p.set_defaults(func=prepare)
  p = sub.add_parser("train")
  p.add_argument("--data", default="runs/mmdit_data/data.npz")
  p.add_argument("--out", default="runs/mmdit_run")
  p.add_argument("--variants", default="dit_pooled,dit_cross,mmdit_double,mmdit_single,"
                 "mmdit_hybrid")
  p.add_argument("--size", default="cpu", choices=("cpu", "gpu"))
  p.add_argument("--steps", type=int, default=6000)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--sample-steps", type=int, default=40)
  p.add_argument("--num-samples", type=int, default=NUM_TEST, help="test captions to sample")
  p.add_argument("--cfg-scales", type=lambda s: [float(v) for v in s.split(",")],
                 default=[3.0], help="guidance scales to sample at (comma-separated); the "
                 "first is the table's and the learning curve's, the others a sweep")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the sampled weights")
  p.add_argument("--eval-every", type=int, default=0,
                 help="score samples of --eval-samples test captions every this many steps "
                      "(a learning curve; needs the shapes module, i.e. TFDS)")
  p.add_argument("--eval-samples", type=int, default=64)
  p.set_defaults(func=train)
  p = sub.add_parser("report")
  p.add_argument("--data", default="runs/mmdit_data/data.npz")
  p.add_argument("--samples", default="runs/mmdit_run")
  p.add_argument("--out", default="experiments/results")
  p.add_argument("--grid", type=int, default=10)
  p.set_defaults(func=report)
  args = parser.parse_args()
  args.func(args)


if __name__ == "__main__":
  main()
