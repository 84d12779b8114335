"""`dit-jax <command>`: parses flags and calls library functions (which a notebook can call too).

    dit-jax flops                                   # the 12 DiT presets at 256x256
    dit-jax flops --models XL/2,B/4 --xla --format markdown --plot flops.png
    dit-jax flops --config configs/dit.py:DiT-B/4 --config.model.conditioning=cross_attn
    dit-jax train --config configs/quickstart.py --workdir runs/quickstart
    dit-jax sample --workdir runs/quickstart --per-class 8 --out samples.png
"""
import argparse
import csv
import io
import json
import sys
import time

import numpy as np

from dit_jax import flops
from dit_jax.config import apply_overrides, load_config, model_input_shape
from dit_jax.models import create_model
from dit_jax.models.dit import CONDITIONINGS, PRESETS, dit

FORMATS = ("table", "json", "csv", "markdown")


def _model_names(spec: str) -> list[str]:
  if spec == "all":
    return list(PRESETS)
  return [n if n.startswith("DiT-") else f"DiT-{n}" for n in spec.split(",") if n]


def flops_rows(args, overrides: list[str]) -> list[dict]:
  """One report row per requested model (from presets, or from a config file)."""
  if args.config:
    config = apply_overrides(load_config(args.config), overrides)
    models = [(config.model.name, create_model(config.model))]
    *size, channels = model_input_shape(config.data)
  else:
    if overrides:
      raise SystemExit(f"--config.* overrides need --config: got {overrides}")
    if args.image_size % args.latent_downsample:
      raise SystemExit(f"--image-size {args.image_size} is not divisible by "
                       f"--latent-downsample {args.latent_downsample}")
    side = args.image_size // args.latent_downsample
    kw = dict(conditioning=args.conditioning, num_classes=args.num_classes,
              learn_sigma=not args.no_learn_sigma)
    models = [(name, dit(name, **kw)) for name in _model_names(args.models)]
    size, channels = (side, side), args.channels
  rows = []
  for name, model in models:
    row = flops.dit_report(model, name, *size, channels, with_xla=args.xla)
    default_design = (model.conditioning == "adaln_zero" and model.learn_sigma
                      and model.num_classes == 1000)
    if (*size, channels) == (32, 32, 4) and default_design and name in flops.PAPER_GFLOPS_256:
      row["paper_gflops"] = flops.PAPER_GFLOPS_256[name]
    rows.append(row)
  return rows


def _columns(rows):
  cols = [("model", "model", "{}"), ("patch", "patch_size", "{}"), ("tokens", "tokens", "{}"),
          ("Gflops", "gflops", "{:.3f}")]
  if any("paper_gflops" in r for r in rows):
    cols.append(("paper Gflops", "paper_gflops", "{:.2f}"))
  if any("xla_gflops" in r for r in rows):
    cols += [("XLA Gflops/2", "xla_gflops", "{:.3f}"), ("XLA/analytic", "xla_ratio", "{:.4f}")]
  cols.append(("params (M)", "params_m", "{:.2f}"))
  return cols


def _cells(row, cols):
  values = dict(row, params_m=row["params"] / 1e6)
  if "xla_gflops" in row:
    values["xla_ratio"] = row["xla_gflops"] / row["gflops"]
  return [fmt.format(values[key]) if key in values else "" for _, key, fmt in cols]


def format_rows(rows: list[dict], fmt: str) -> str:
  if fmt == "json":
    return json.dumps(rows, indent=2)
  cols = _columns(rows)
  header = [title for title, _, _ in cols]
  body = [_cells(r, cols) for r in rows]
  if fmt == "csv":
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([key for _, key, _ in cols])
    writer.writerows(body)
    return out.getvalue().rstrip("\n")
  if fmt == "markdown":
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])
  widths = [max(len(h), *(len(c[i]) for c in body)) for i, h in enumerate(header)]
  line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))
  return "\n".join([line(header)] + [line(cells) for cells in body])


def cmd_flops(args, overrides):
  rows = flops_rows(args, overrides)
  print(format_rows(rows, args.format))
  if args.plot:
    from dit_jax.plots import plot_flops
    plot_flops(rows, args.plot)
    print(f"wrote {args.plot}", file=sys.stderr)


def cmd_train(args, overrides):
  from dit_jax import train
  config = apply_overrides(load_config(args.config), overrides)
  start = time.perf_counter()
  state = train.train_and_evaluate(config, args.workdir)
  print(f"trained to step {int(state.step)} in {time.perf_counter() - start:.0f} s; samples, "
        f"loss.png, metrics.jsonl, tensorboard/ and checkpoints/ are in {args.workdir}")


def _sample_labels(args, num_classes: int) -> np.ndarray:
  if args.labels:
    labels = np.array([int(v) for v in args.labels.split(",")], np.int32)
    if num_classes and (labels.min() < 0 or labels.max() > num_classes):
      raise ValueError(f"--labels must lie in 0..{num_classes} ({num_classes} is the null class)")
    return labels
  return np.repeat(np.arange(max(num_classes, 1)), args.per_class).astype(np.int32)


def cmd_sample(args, overrides):
  import jax

  from dit_jax import flow, images, train
  from dit_jax.sample import ImageSampler
  config, state = train.load_run(args.workdir)
  for key, value in (("steps", args.steps), ("method", args.method)):
    if value is not None:
      config.sample[key] = value
  model = create_model(config.model)
  sampler = ImageSampler(model, flow.make_objective(config.objective), config.sample,
                         model_input_shape(config.data))
  labels = _sample_labels(args, model.num_classes)
  rng = jax.random.PRNGKey(args.seed)
  batch = min(args.batch_size, len(labels))
  chunks = []
  for start in range(0, len(labels), batch):
    chunk = labels[start:start + batch]
    padded = np.pad(chunk, (0, batch - len(chunk)), mode="edge")  # one compiled shape
    out = sampler(state.ema_params, padded, jax.random.fold_in(rng, start), args.cfg_scale)
    chunks.append(images.to_uint8(out[:len(chunk)]))
  samples = np.concatenate(chunks)
  if args.out.endswith(".npz"):
    images.save_npz(samples, labels, args.out)
  else:
    rows = max(model.num_classes, 1) if not args.labels else 1
    images.save_png(images.make_grid(samples, rows), args.out,
                    upscale=max(1, 64 // samples.shape[1]))
  print(f"wrote {len(samples)} samples of step {int(state.step)} to {args.out}")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="dit-jax", description=__doc__.split("\n")[0])
  commands = parser.add_subparsers(dest="command", required=True)
  p = commands.add_parser("flops", help="analytic forward Gflops and parameters of DiT models",
                          description=flops.__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--models", default="all", help="comma list, e.g. XL/2,B/4 (default: all 12)")
  p.add_argument("--image-size", type=int, default=256, help="image side in pixels")
  p.add_argument("--latent-downsample", type=int, default=8,
                 help="VAE downsampling factor (1 for pixel-space models)")
  p.add_argument("--channels", type=int, default=4, help="channels the model sees")
  p.add_argument("--conditioning", default="adaln_zero", choices=CONDITIONINGS)
  p.add_argument("--num-classes", type=int, default=1000)
  p.add_argument("--no-learn-sigma", action="store_true", help="output C, not 2C, channels")
  p.add_argument("--config", help="count the model of an ml-collections config instead, "
                 "e.g. configs/dit.py:DiT-B/4, with --config.model.FIELD=VALUE overrides")
  p.add_argument("--xla", action="store_true",
                 help="add XLA's cost analysis of the compiled forward (compiles each model)")
  p.add_argument("--format", default="table", choices=FORMATS)
  p.add_argument("--plot", metavar="FILE.png", help="draw Gflops vs patch and params vs Gflops")
  p.set_defaults(func=cmd_flops)

  p = commands.add_parser("train", help="train a model from a config; resumes from its workdir")
  p.add_argument("--config", required=True, help="e.g. configs/quickstart.py, with "
                 "--config.section.field=value overrides")
  p.add_argument("--workdir", required=True, help="checkpoints, logs and samples go here")
  p.set_defaults(func=cmd_train)

  p = commands.add_parser("sample", help="sample a trained run's EMA model to PNG or NPZ")
  p.add_argument("--workdir", required=True)
  p.add_argument("--out", required=True, help="FILE.png (grid) or FILE.npz (uint8 NHWC "
                 "images in arr_0, labels in labels)")
  which = p.add_mutually_exclusive_group()
  which.add_argument("--per-class", type=int, default=8, help="samples per class (one row each)")
  which.add_argument("--labels", help="comma list of class labels, e.g. 3,1,4")
  p.add_argument("--cfg-scale", type=float, help="guidance scale (default: config.sample)")
  p.add_argument("--steps", type=int, help="sampler steps (default: config.sample)")
  p.add_argument("--method", choices=("euler", "heun", "ddpm", "ddim"))
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--batch-size", type=int, default=256, help="samples per compiled call")
  p.set_defaults(func=cmd_sample)
  return parser


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  overrides = [a[len("--config."):] for a in argv if a.startswith("--config.")]
  args = build_parser().parse_args([a for a in argv if not a.startswith("--config.")])
  try:
    args.func(args, overrides)
  except (ValueError, KeyError, FileNotFoundError, NotImplementedError, FloatingPointError) as e:
    raise SystemExit(f"dit-jax {args.command}: {e}") from None


if __name__ == "__main__":
  main()
