"""Why MM-DiT exists: compositional prompts on the captioned `shapes` data set.

Five text-conditioned models of (nearly) equal forward FLOPs are trained with flow matching on
24x24 (or 32x32) images of 2-3 coloured shapes on a 3x3 grid, with captions such as "a red
circle at the top left and a blue square in the centre":

  dit_pooled      DiT, pooled text only (added to the timestep vector, adaLN-Zero)
  dit_cross       DiT, adaLN-Zero from t + pooled text and cross-attention to the text tokens
  mmdit_double    MM-DiT, double-stream blocks (SD3)
  mmdit_single    single-stream blocks (Z-Image)
  mmdit_hybrid    double- then parallel single-stream blocks (FLUX)

All share the same small word-level text encoder, trained with the model (10% caption dropout).
Samples for held-out test captions are checked exactly: in each captioned cell the dominant
palette colour and a shape classifier (fill ratio of the colour's bounding box: square ~1,
circle ~0.785, triangle ~0.5) are compared with the caption; empty cells must stay empty.
The report adds a caption-blind baseline (real images scored against the wrong captions) and,
when `train --eval-every N` recorded one, a learning curve of the accuracies.

    python experiments/mmdit_composition.py prepare --out runs/mmdit_data      # seconds
    python experiments/mmdit_composition.py train --data runs/mmdit_data/data.npz \\
        --out runs/mmdit_run --steps 6000                                       # GPU: minutes
    python experiments/mmdit_composition.py report --data runs/mmdit_data/data.npz \\
        --samples runs/mmdit_run --out experiments/results

`train` needs only JAX/Flax/Optax and this package (no TFDS, unless --eval-every), so it runs
on a bare accelerator machine; `prepare` and `report` use the `shapes` generator. On a 2-core
CPU a 3000-step variant at batch 64 takes about 12 minutes and is not enough (README).
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

def prepare(args):
  from dit_jax.data import shapes
  from dit_jax.text import make_tokenizer
  tok = make_tokenizer("words:shapes")
  config = shapes.ShapesConfig(name="multi", resolution=args.resolution, min_objects=2,
                               max_objects=3)
  out = {}
  for split, count in (("train", args.num_train), ("test", NUM_TEST)):
    exs = [shapes.example(config, split, i) for i in range(count)]
    out[f"{split}_images"] = np.stack([e["image"] for e in exs])
    out[f"{split}_tokens"], out[f"{split}_mask"] = tok.encode_batch(
        [e["caption"] for e in exs], _variants().TEXT_LENGTH)
    for key in ("shape", "colour", "row", "col"):
      out[f"{split}_{key}"] = np.stack([e["objects"][key] for e in exs])
  out["test_captions"] = np.array([e["caption"] for e in exs])
  out["vocab_size"] = np.int32(tok.vocab_size)
  Path(args.out).mkdir(parents=True, exist_ok=True)
  np.savez_compressed(Path(args.out) / "data.npz", **out)
  print(f"wrote {args.out}/data.npz: {args.num_train} train, {NUM_TEST} test examples")


# ---------------------------------------------------------------------------------------------
# train: each variant, then sample the test captions

def gflops(model, resolution: int) -> float:
  """Forward Gflops of one example (multiply-adds), from XLA's cost analysis / 2."""
  import jax
  import jax.numpy as jnp
  x = jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.float32)
  cond = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), model.example_condition(1))
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, cond)
  cost = jax.jit(model.apply).lower(variables, x, t, cond).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"]) / 2 / 1e9


def train_variant(variant, data, args):
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import optax
  from dit_jax import flow
  from dit_jax.models import model_fn
  vocab = int(data["vocab_size"])
  model = build_model(variant, vocab, args.size)
  objective = flow.make_objective({"kind": "flow", "t_dist": "logit_normal"})
  images = jnp.asarray(data["train_images"], jnp.float32) / 127.5 - 1.0
  tokens, mask = jnp.asarray(data["train_tokens"]), jnp.asarray(data["train_mask"])
  n = images.shape[0]
  rng = jax.random.PRNGKey(args.seed)
  cond0 = {"text_tokens": tokens[:2], "text_mask": mask[:2]}
  params = nn.unbox(jax.jit(model.init)(rng, images[:2], jnp.zeros((2,)), cond0)["params"])
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, args.lr, min(200, args.steps // 10), args.steps, args.lr * 0.05)
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.0))
  opt_state = optimizer.init(params)
  ema = params

  @jax.jit
  def step(params, opt_state, ema, i, images, tokens, mask):  # data as arguments, not constants
    key = jax.random.fold_in(rng, i)
    idx_key, loss_key, drop_key = jax.random.split(key, 3)
    idx = jax.random.randint(idx_key, (args.batch,), 0, n)
    cond = {"text_tokens": tokens[idx], "text_mask": mask[idx]}

    def loss_fn(p):
      return objective.loss(model_fn(model, p, train=True, rng=drop_key), loss_key, images[idx],
                            cond)[0]
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    ema = jax.tree.map(lambda e, p: args.ema * e + (1 - args.ema) * p, ema, params)
    return params, opt_state, ema, loss

  losses, curve, start, steps_done, eval_s = [], [], time.time(), 0, 0.0
  for i in range(args.steps):
    if time.time() - start - eval_s > args.max_train_seconds:  # safety on a shared machine
      print(f"{variant}: stopped at step {i} after {args.max_train_seconds}s", flush=True)
      break
    params, opt_state, ema, loss = step(params, opt_state, ema, i, images, tokens, mask)
    steps_done = i + 1
    if i % 100 == 0 or i == args.steps - 1:
      losses.append((i, float(loss)))
      print(f"{variant} step {i} loss {float(loss):.4f} {time.time() - start:.0f}s", flush=True)
    if args.eval_every and steps_done % args.eval_every == 0 and steps_done < args.steps:
      eval_start = time.time()  # learning curve: a few captions, EMA weights, checked exactly
      scores = check(sample(model, ema, data, args, args.eval_samples), data)
      curve.append(dict(step=steps_done, **scores))
      eval_s += time.time() - eval_start
      print(f"{variant} step {steps_done} eval {json.dumps(scores)}", flush=True)
  train_s = time.time() - start - eval_s
  samples = sample(model, ema, data, args, args.num_samples)
  n_params = sum(p.size for p in jax.tree.leaves(params))
  return samples, dict(variant=variant, params=int(n_params), gflops=gflops(model, images.shape[1]),
                       train_seconds=train_s, steps=steps_done, batch=args.batch, lr=args.lr,
                       sample_steps=args.sample_steps, cfg_scale=args.cfg_scale,
                       final_loss=float(np.mean([loss for _, loss in losses[-5:]])), losses=losses,
                       curve=curve)


def sample(model, params, data, args, n: int) -> np.ndarray:
  """The first n test captions -> (n, H, W, 3) uint8 samples (Euler, classifier-free
  guidance; the same starting noise for every model)."""
  import jax
  import jax.numpy as jnp
  from dit_jax import images
  cond = {"text_tokens": jnp.asarray(data["test_tokens"][:n]),
          "text_mask": jnp.asarray(data["test_mask"][:n])}
  x0 = jax.random.normal(jax.random.PRNGKey(args.seed + 1),
                         (cond["text_mask"].shape[0], *data["test_images"].shape[1:]))
  run = _sampler(model, args.sample_steps, args.cfg_scale)
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
    samples, log = train_variant(variant, data, args)
    np.save(out / f"samples_{variant}.npy", samples)
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


def check(samples, data, split="test") -> dict:
  """Per-object and per-image accuracy of samples against the test captions' objects."""
  from dit_jax.data.shapes import GRID, PALETTE, cell_bounds
  colour_ok, shape_ok, both_ok, images_ok, empty_ok = [], [], [], [], []
  for i, img in enumerate(samples):
    if i >= len(data[f"{split}_shape"]):
      break
    wanted = {(int(r), int(c)): (int(s), int(k)) for s, k, r, c in zip(
        data[f"{split}_shape"][i], data[f"{split}_colour"][i], data[f"{split}_row"][i],
        data[f"{split}_col"][i], strict=True) if s >= 0}
    all_ok = True
    for r in range(GRID):
      for c in range(GRID):
        res = img.shape[0]
        (y0, y1), (x0, x1) = cell_bounds(r, res), cell_bounds(c, res)
        colour, shape = classify_cell(img[y0:y1, x0:x1], PALETTE)
        if (r, c) in wanted:
          s, k = wanted[(r, c)]
          colour_ok.append(colour == k)
          shape_ok.append(shape == s)
          both_ok.append(colour == k and shape == s)
          all_ok &= both_ok[-1]
        else:
          empty_ok.append(colour == -1)
          all_ok &= empty_ok[-1]
    images_ok.append(all_ok)
  mean = lambda v: float(np.mean(v))
  return dict(colour=mean(colour_ok), shape=mean(shape_ok), object=mean(both_ok),
              empty_cells=mean(empty_ok), all_objects=mean(images_ok))


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
  entries.sort(key=lambda e: order.index(e["variant"]))
  log = dict(device=device, logs=entries)
  out = Path(args.out)
  rows = [dict(variant="real test images (checker sanity)", **check(data["test_images"], data)),
          # A perfect generator that ignores the caption: real images of the wrong captions.
          dict(variant="caption-blind baseline", **check(np.roll(data["test_images"], 1, 0),
                                                         data))]
  grids = [data["test_images"][:args.grid]]
  for entry in log["logs"]:
    samples = np.load(entry.pop("folder") / f"samples_{entry['variant']}.npy")
    rows.append(dict(entry, **check(samples, data)))
    grids.append(samples[:args.grid])
  header = ("| model | Gflops | params | steps | final loss | colour | shape | object (colour+shape)"
            " | empty cells | all objects |\n|---|---|---|---|---|---|---|---|---|---|\n")
  fmt = lambda r, k, f: f.format(r[k]) if k in r else "-"
  table = header + "".join(
      f"| {r['variant']} | {fmt(r, 'gflops', '{:.4f}')} | {fmt(r, 'params', '{:,}')} | "
      f"{fmt(r, 'steps', '{}')} | "
      f"{fmt(r, 'final_loss', '{:.4f}')} | {r['colour']:.3f} | {r['shape']:.3f} | "
      f"{r['object']:.3f} | {r['empty_cells']:.3f} | {r['all_objects']:.3f} |\n" for r in rows)
  res = data["test_images"].shape[1]
  first = log["logs"][0]
  setup = (f"{len(samples)} held-out captions of shapes with 2-3 objects at {res}x{res}; batch "
           f"{first['batch']}, learning rate {first.get('lr', '?')}; Euler "
           f"{first.get('sample_steps', '?')} steps with guidance {first.get('cfg_scale', '?')}; "
           f"device {log['device']}.")
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
  p.set_defaults(func=prepare)
  p = sub.add_parser("train")
  p.add_argument("--data", default="runs/mmdit_data/data.npz")
  p.add_argument("--out", default="runs/mmdit_run")
  p.add_argument("--variants", default="dit_pooled,dit_cross,mmdit_double,mmdit_single,"
                 "mmdit_hybrid")
  p.add_argument("--size", default="cpu", choices=("cpu", "gpu"))
  p.add_argument("--steps", type=int, default=6000)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--lr", type=float, default=5e-4)
  p.add_argument("--sample-steps", type=int, default=40)
  p.add_argument("--num-samples", type=int, default=NUM_TEST, help="test captions to sample")
  p.add_argument("--cfg-scale", type=float, default=3.0)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--max-train-seconds", type=float, default=float("inf"))
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
