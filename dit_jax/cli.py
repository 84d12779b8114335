"""`dit-jax <command>`: parses flags and calls library functions (which a notebook can call too).

    dit-jax flops                                   # the 12 DiT presets at 256x256
    dit-jax flops --models XL/2,B/4 --xla --format markdown --plot flops.png
    dit-jax flops --config configs/dit.py:DiT-B/4 --config.model.conditioning=cross_attn
    dit-jax train --config configs/quickstart.py --workdir runs/quickstart
    dit-jax sample --workdir runs/quickstart --per-class 8 --out samples.png
    dit-jax train-vae --config configs/vae.py --workdir runs/vae
    dit-jax extract-latents --config configs/latent_quickstart.py --vae runs/vae --out lat --flip
    dit-jax convert --from pytorch --in DiT-XL-2-256x256.pt --out ckpt/DiT-XL-2-256
    dit-jax sample --converted ckpt/DiT-XL-2-256 --vae sd-vae-ft-ema --out samples.png
    dit-jax bench --model DiT-XL/2 --batch-size 32 --attention cudnn --mesh fsdp=8,rules=fsdp
    dit-jax bench --config configs/mmdit.py:mmdit_hybrid --config.model.dtype=bfloat16
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from dit_jax import flops
from dit_jax.config import apply_overrides, load_config, model_input_shape
from dit_jax.models import class_count, create_model
from dit_jax.models.dit import CONDITIONINGS, PRESETS, dit
from dit_jax.reports import FORMATS, flops_row, format_rows


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
  return [flops_row(model, name, *size, channels, with_xla=args.xla) for name, model in models]


def cmd_flops(args, overrides):
  rows = flops_rows(args, overrides)
  print(format_rows(rows, args.format))
  if args.plot:
    from dit_jax.plots import plot_flops
    plot_flops(rows, args.plot)
    print(f"wrote {args.plot}", file=sys.stderr)


def cmd_train(args, overrides):
  if args.multihost or args.coordinator:
    from dit_jax import parallel  # before any other JAX call
    parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
  from dit_jax import train
  config = apply_overrides(load_config(args.config), overrides)
  start = time.perf_counter()
  state = train.train_and_evaluate(config, args.workdir)
  print(f"trained to step {int(state.step)} in {time.perf_counter() - start:.0f} s; samples, "
        f"loss.png, metrics.jsonl, tensorboard/ and checkpoints/ are in {args.workdir}")


def _mesh_fields(spec: str) -> dict:
  fields = {}
  for item in filter(None, spec.split(",")):
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"--mesh {spec!r}: expected key=value items such as data=2,fsdp=4")
    fields[key] = value if key == "rules" else int(value)
  return fields


BENCH_DEFAULTS = dict(model="DiT-XL/2", dtype="bfloat16", attention="auto", remat="none")


def bench_model(args, overrides):
  """(name, model, image shape, config or None) that `dit-jax bench` times: a DiT preset built
  from the flags, or the model of --config (its fields from the config and overrides)."""
  import jax.numpy as jnp
  preset_flags = [f"--{k}" for k in BENCH_DEFAULTS if getattr(args, k) is not None]
  preset_flags += ["--scan"] if args.scan else []
  if args.config:
    if preset_flags:
      raise ValueError(f"{preset_flags} set a preset's fields; with --config set them in the "
                       "config, e.g. --config.model.dtype=bfloat16 "
                       "--config.model.attention_backend=cudnn")
    config = apply_overrides(load_config(args.config), overrides)
    return (config.model.name, create_model(config.model), model_input_shape(config.data),
            config)
  if overrides:
    raise ValueError(f"--config.* overrides need --config: got {overrides}")
  get = lambda k: BENCH_DEFAULTS[k] if getattr(args, k) is None else getattr(args, k)
  name = get("model") if get("model").startswith("DiT-") else f"DiT-{get('model')}"
  model = dit(name, dtype=jnp.dtype(get("dtype")), attention_backend=get("attention"),
              scan_layers=args.scan, remat_policy=get("remat"))
  side = args.image_size // args.latent_downsample
  return name, model, (side, side, args.channels), None


def cmd_bench(args, overrides):
  import jax

  from dit_jax import bench
  name, model, image_shape, config = bench_model(args, overrides)
  result = bench.bench_train_step(model, image_shape, args.batch_size, steps=args.steps,
                                  mesh_config=_mesh_fields(args.mesh), config=config)
  # Fields a family may lack (the U-Net has no scan) are reported as None.
  design = {k: getattr(model, f, None) for k, f in (("attention", "attention_backend"),
            ("scan", "scan_layers"), ("remat", "remat_policy"))}
  design["dtype"] = str(np.dtype(model.dtype))
  row = dict(model=name, batch=args.batch_size, input=list(image_shape), **design,
             devices=len(jax.devices()), device=jax.devices()[0].device_kind, **result.as_dict())
  if args.format == "json":
    print(json.dumps(row))
  else:
    memory = f"{row['memory_gib']:.2f} GiB" if row["memory_gib"] else "n/a"
    print(f"{name} batch {args.batch_size} {row['dtype']} attention={row['attention']} "
          f"scan={row['scan']} remat={row['remat']} on {row['devices']} x {row['device']}: "
          f"{row['images_per_s']:.1f} images/s, {row['step_ms']:.1f} ms/step, "
          f"{row['train_tflops_per_s']:.1f} TFLOP/s per device, step memory {memory}, "
          f"compile {row['compile_s']:.1f} s")


def cmd_train_vae(args, overrides):
  from dit_jax import vae_train
  config = apply_overrides(load_config(args.config), overrides)
  start = time.perf_counter()
  if vae_train.train_vae(config, args.workdir) is None:
    return  # stopped by SIGTERM after saving; rerun to resume
  stats = json.loads((Path(args.workdir) / "eval.json").read_text())
  print(f"trained in {time.perf_counter() - start:.0f} s: {config.vae_train.eval_split} PSNR "
        f"{stats['psnr']:.2f} dB, scaling_factor {stats['scaling_factor']}; --vae "
        f"{args.workdir} (diffusers layout in {Path(args.workdir) / 'vae'})")


def cmd_extract_latents(args, overrides):
  from dit_jax import latents
  config = apply_overrides(load_config(args.config), overrides)
  data_config = config.data.to_dict()
  if args.split:
    data_config["split"] = args.split
  info = latents.extract_latents(
      data_config, args.vae, args.out, flip=args.flip, batch_size=args.batch_size,
      chunk_size=args.chunk_size, dtype=args.dtype, compute_dtype=args.compute_dtype,
      max_chunks=args.max_chunks)
  print(f"encoded {info['encoded']} examples in {info['seconds']:.1f} s "
        f"({info['examples_per_s']:.1f}/s); {info['chunks_of_this_process']} chunks of this "
        f"process done; latents {tuple(info['latent_shape'])} x {info['num_examples']} in "
        f"{args.out}")


def _sample_labels(args, num_classes: int) -> np.ndarray:
  if args.labels:
    labels = np.array([int(v) for v in args.labels.split(",")], np.int32)
    if num_classes and (labels.min() < 0 or labels.max() > num_classes):
      raise ValueError(f"--labels must lie in 0..{num_classes} ({num_classes} is the null class)")
    return labels
  return np.repeat(np.arange(max(num_classes, 1)), args.per_class).astype(np.int32)


def cmd_convert(args, overrides):
  from dit_jax.convert import dit as convert_dit
  if (args.src is None) == (args.dst is None):
    raise ValueError("pass exactly one of --from pytorch (import) or --to pytorch (export)")
  if args.src:
    info = convert_dit.convert_file(args.inp, args.out, args.model, args.num_heads)
  else:
    info = convert_dit.export_file(args.inp, args.out)
  print(f"wrote {args.out}: {info.get('model') or 'DiT'} {convert_dit.describe(info)}")


def cmd_sample_converted(args):
  import jax

  from dit_jax import images
  from dit_jax.convert.dit import load_converted
  from dit_jax.convert.dit_sample import PAPER_LABELS, decode_latents, sample_latents
  params, info = load_converted(args.converted)
  labels = (np.array([int(v) for v in args.labels.split(",")], np.int32) if args.labels
            else np.array(PAPER_LABELS, np.int32) % max(info["num_classes"], 1))
  start = time.perf_counter()
  latents = sample_latents(params, info, labels, jax.random.PRNGKey(args.seed),
                           method=args.method or "ddpm", steps=args.steps or 250,
                           cfg_scale=4.0 if args.cfg_scale is None else args.cfg_scale,
                           guide_channels=args.guide_channels)
  print(f"sampled {len(labels)} latents in {time.perf_counter() - start:.1f} s")
  if args.vae is None:
    if not args.out.endswith(".npz"):
      raise ValueError("without --vae only latents can be written: use --out FILE.npz, or pass "
                       "--vae DIR (the SD VAE) to write images")
    np.savez(args.out, latents=latents, labels=labels)
  else:
    samples = images.to_uint8(decode_latents(latents, args.vae))
    if args.out.endswith(".npz"):
      images.save_npz(samples, labels, args.out)
    else:
      images.save_png(images.make_grid(samples, rows=-(-len(samples) // 4)), args.out)
  print(f"wrote {len(labels)} samples to {args.out}")


def _sample_captions(args, config, sampler, state):
  """A caption-conditioned run: --per-class samples for each ';'-separated caption."""
  import jax

  from dit_jax import images
  from dit_jax.data.tokenizers import make_tokenizer
  if not args.captions:
    raise ValueError("this model is conditioned on captions: pass --captions 'a red circle at "
                     "the top left;a blue square in the centre' (';' between captions)")
  captions = [c.strip() for c in args.captions.split(";") if c.strip()]
  tokens, mask = make_tokenizer(config.data.text_tokenizer).encode_batch(
      captions, config.data.text_length)
  cond = {"text_tokens": np.repeat(tokens, args.per_class, axis=0),
          "text_mask": np.repeat(mask, args.per_class, axis=0)}
  samples = images.to_uint8(sampler.sample(state.ema_params, cond, jax.random.PRNGKey(args.seed),
                                           args.cfg_scale))
  if args.out.endswith(".npz"):
    np.savez(args.out, arr_0=samples, captions=np.repeat(np.array(captions), args.per_class))
  else:
    images.save_png(images.make_grid(samples, rows=len(captions)), args.out,
                    upscale=max(1, 64 // samples.shape[1]))
  print(f"wrote {len(samples)} samples of step {int(state.step)} for {len(captions)} captions "
        f"to {args.out}")


def cmd_sample(args, overrides):
  import jax
  if args.converted:
    return cmd_sample_converted(args)

  from dit_jax import flow, images, latents, train
  from dit_jax.sample import ImageSampler
  config, state = train.load_run(args.workdir)
  for key, value in (("steps", args.steps), ("method", args.method)):
    if value is not None:
      config.sample[key] = value
  if args.vae:
    config.data.vae = args.vae
  model = create_model(config.model)
  sampler = ImageSampler(model, flow.make_objective(config.objective), config.sample,
                         model_input_shape(config.data), decode=latents.decoder_for(config))
  rng = jax.random.PRNGKey(args.seed)
  spec = model.condition_spec
  if "text" in spec:
    raise ValueError(f"{config.model.name} reads cond 'text' ({spec['text'].meaning}), which the "
                     "CLI cannot make from --captions: it needs precomputed text embeddings; "
                     "sample with ImageSampler.sample(params, cond) and cond from "
                     "dit_jax.data.text_embeddings.load_text_embeddings(FILE.npz)")
  if "text_tokens" in spec:
    return _sample_captions(args, config, sampler, state)
  if set(spec) - {"label"}:
    raise ValueError(f"{config.model.name} reads {sorted(spec)}: the CLI samples class labels "
                     "(--labels, --per-class) or captions (--captions) only")
  labels = _sample_labels(args, class_count(model))
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
    rows = max(class_count(model), 1) if not args.labels else 1
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
  p.add_argument("--multihost", action="store_true", help="join a multi-process run (TPU pod "
                 "slice, SLURM, ...): jax.distributed.initialize() before anything else; "
                 "every process runs the same command")
  p.add_argument("--coordinator", help="host:port of process 0 (--multihost without "
                 "auto-detection)")
  p.add_argument("--num-processes", type=int, help="with --coordinator")
  p.add_argument("--process-id", type=int, help="with --coordinator")
  p.set_defaults(func=cmd_train)

  p = commands.add_parser("bench", help="time the sharded train step of a model on random data")
  p.add_argument("--model", help="a DiT preset (default DiT-XL/2)")
  p.add_argument("--config", help="time the model of this config instead (e.g. "
                 "configs/mmdit.py:mmdit_hybrid), with --config.section.field=value overrides")
  p.add_argument("--image-size", type=int, default=256)
  p.add_argument("--latent-downsample", type=int, default=8, help="1 for pixel space")
  p.add_argument("--channels", type=int, default=4)
  p.add_argument("--batch-size", type=int, default=32, help="global batch")
  p.add_argument("--steps", type=int, default=10, help="timed steps (after 2 warm-up steps)")
  p.add_argument("--dtype", help="compute dtype, default bfloat16 (params stay float32)")
  p.add_argument("--attention", help="attention backend: xla, jax, cudnn, splash, auto "
                 "(default)")
  p.add_argument("--scan", action="store_true", help="scan over layers (one compiled block)")
  p.add_argument("--remat", help="none (default), full, dots, save_block_outputs")
  p.add_argument("--mesh", default="", help="e.g. data=2,fsdp=4,rules=fsdp (default: data "
                 "parallel over all devices)")
  p.add_argument("--format", choices=("table", "json"), default="table")
  p.set_defaults(func=cmd_bench)

  p = commands.add_parser("train-vae", help="train a KL autoencoder (VAE) on a TFDS data set")
  p.add_argument("--config", required=True, help="e.g. configs/vae.py")
  p.add_argument("--workdir", required=True, help="checkpoints, logs and the exported vae/")
  p.set_defaults(func=cmd_train_vae)

  p = commands.add_parser("extract-latents", help="encode a TFDS split with a VAE into a "
                          "latent data set (resumable; each process encodes its own chunks)")
  p.add_argument("--config", required=True, help="a training config: its data.name, "
                 "data.split, data.data_dir and data.image_size say what to encode")
  p.add_argument("--vae", required=True, help="diffusers AutoencoderKL folder, pipeline folder "
                 "with vae/, or a `train-vae` workdir")
  p.add_argument("--out", required=True, help="folder for the latents (data.latents)")
  p.add_argument("--split", help="override data.split")
  p.add_argument("--flip", action="store_true", help="also encode horizontal flips")
  p.add_argument("--batch-size", type=int, default=64, help="images per encoder call")
  p.add_argument("--chunk-size", type=int, default=1024, help="examples per file (resume unit)")
  p.add_argument("--dtype", default="float32", choices=("float32", "float16"),
                 help="storage dtype of the posterior moments")
  p.add_argument("--compute-dtype", choices=("float32", "bfloat16"),
                 help="encoder compute dtype (default float32)")
  p.add_argument("--max-chunks", type=int, help="stop after this many chunks (rerun resumes)")
  p.set_defaults(func=cmd_extract_latents)

  p = commands.add_parser("sample", help="sample a trained run's EMA model to PNG or NPZ")
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument("--workdir", help="a training run's directory")
  source.add_argument("--converted", metavar="DIR", help="a published DiT converted with "
                      "`dit-jax convert` (250-step DDPM with learned variance by default)")
  p.add_argument("--vae", metavar="DIR", help="VAE folder that decodes latents: for "
                 "--converted the diffusers SD VAE (sd-vae-ft-ema; without it the .npz holds "
                 "the latents); for a latent --workdir it replaces config.data.vae")
  p.add_argument("--captions", help="caption-conditioned runs: ';'-separated captions, one "
                 "grid row (--per-class samples) each")
  p.add_argument("--guide-channels", type=int, help="--converted: guide only the first K latent "
                 "channels (3 reproduces the original sampler exactly; default all)")
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

  p = commands.add_parser("convert", help="published PyTorch DiT checkpoint <-> dit_jax")
  p.add_argument("--from", dest="src", choices=("pytorch",), help="import a facebookresearch/"
                 "DiT state dict (.pt with torch installed, .safetensors or .npz)")
  p.add_argument("--to", dest="dst", choices=("pytorch",), help="export a converted directory "
                 "back to that layout (.safetensors or .npz)")
  p.add_argument("--in", dest="inp", required=True, help="the file (--from) or directory (--to)")
  p.add_argument("--out", required=True, help="the directory (--from) or file (--to)")
  p.add_argument("--model", help="expected preset, e.g. DiT-XL/2 (default: inferred)")
  p.add_argument("--num-heads", type=int, help="head count of a non-preset size")
  p.set_defaults(func=cmd_convert)
  return parser


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  overrides = [a[len("--config."):] for a in argv if a.startswith("--config.")]
  args = build_parser().parse_args([a for a in argv if not a.startswith("--config.")])
  try:
    args.func(args, overrides)
  except (ValueError, KeyError, FileNotFoundError, NotImplementedError, FloatingPointError,
          ImportError) as e:
    raise SystemExit(f"dit-jax {args.command}: {e}") from None


if __name__ == "__main__":
  main()
