"""`dit-jax <command>`: parses flags and calls library functions (which a notebook can call too).

    dit-jax flops                                   # the 12 DiT presets at 256x256
    dit-jax flops --models XL/2,B/4 --xla --format markdown --plot flops.png
    dit-jax flops --config configs/dit.py:DiT-B/4 --config.model.conditioning=cross_attn
    dit-jax train --config configs/quickstart.py --workdir runs/quickstart
    dit-jax sample --workdir runs/quickstart --per-class 8 --out samples.png
    dit-jax sample --workdir runs/quickstart --num 10000 --out samples.npz
    dit-jax eval-ref --features digits/8 --data digits/8 --split test --out ref.npz
    dit-jax eval --samples samples.npz --ref ref.npz --features digits/8
    dit-jax eval --samples s.npz --ref VIRTUAL_imagenet256_labeled.npz --inception pt_inception.pth
    dit-jax sweep --config configs/sweeps/conditioning.py --workdir runs/conditioning
    dit-jax train-vae --config configs/vae.py --workdir runs/vae
    dit-jax extract-latents --config configs/latent_quickstart.py --vae runs/vae --out lat --flip
    dit-jax convert --from pytorch --in DiT-XL-2-256x256.pt --out ckpt/DiT-XL-2-256
    dit-jax sample --converted ckpt/DiT-XL-2-256 --vae sd-vae-ft-ema --out samples.png
    dit-jax bench --model DiT-XL/2 --batch-size 32 --attention cudnn --mesh fsdp=8,rules=fsdp
    dit-jax bench --config configs/mmdit.py:mmdit_hybrid --config.model.dtype=bfloat16
    dit-jax bench --model DiT-XL/2 --batch-size 32 --sample ddpm:250 --cfg-scale 4
    dit-jax aot --config configs/dit.py:DiT-XL/2 --topology v5e-16 --config.mesh.fsdp=16 \
        --config.mesh.data=1 --config.mesh.rules=fsdp
    dit-jax aot --config configs/dit.py:DiT-XL/2 --topology h100 --config.data.batch_size=256

A user error never shows a Python traceback: it prints `dit-jax <command>: <message>` on
stderr, naming the flag, field or file and the fix. Exit status:
    0    done
    1    the command ran and failed: training diverged (FloatingPointError), an I/O error
         such as a full disk, a step that `aot` finds too big for the chip, or an internal
         error (a bug: the traceback is shown)
    2    bad input, as argparse uses it: a bad flag or flag value, a bad --config override
         or config value, a missing, unreadable or malformed file, a missing optional package
    130  interrupted (Ctrl-C) outside training
    128 + signal (143 SIGTERM, 130 SIGINT): `train` / `train-vae` saved the current step and
         stopped on a signal; rerun the same command to resume
`--debug`, anywhere on the command line, re-raises the error to show its traceback.
"""
import argparse
import json
import math
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
from safetensors import SafetensorError

from dit_jax.config import apply_overrides, load_config, model_input_shape, validate
from dit_jax.errors import InputError
from dit_jax.models import class_count, create_model, flops
from dit_jax.models.dit import CONDITIONINGS, PRESETS, REMAT_POLICIES, dit
from dit_jax.nn.attention import BACKENDS
from dit_jax.studies import sweep
from dit_jax.studies.reports import FORMATS, flops_row, format_rows, format_scores


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
    from dit_jax.studies.plots import plot_flops
    plot_flops(rows, args.plot)
    print(f"wrote {args.plot}", file=sys.stderr)


def cmd_train(args, overrides):
  if args.multihost or args.coordinator:
    from dit_jax import parallel  # before any other JAX call
    parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
  from dit_jax.training import denoiser
  config = apply_overrides(load_config(args.config), overrides)
  start, first = time.perf_counter(), []
  state = _until_preempted("train", lambda: denoiser.train_and_evaluate(
      config, args.workdir, on_start=lambda s: first.append(int(s.step))))
  if int(state.step) == first[0]:
    print(f"nothing was trained: {args.workdir} is at step {first[0]} and train.steps="
          f"{config.train.steps}; raise --config.train.steps to train further")
    return
  print(f"trained steps {first[0]}..{int(state.step)} in {time.perf_counter() - start:.0f} s; "
        f"samples, loss.png, metrics.jsonl, tensorboard/ and checkpoints/ are in {args.workdir}")


def _until_preempted(command: str, train_fn):
  """train_fn(); after SIGTERM / SIGINT (saved, stopped) exits with status 128 + signal, as a
  process killed by the signal would, so that a scheduler sees an unfinished run."""
  from dit_jax.engine import Preempted
  try:
    return train_fn()
  except Preempted as stop:
    message = f"dit-jax {command}: {stop}"
    print(message, file=sys.stderr)
    raise CommandError(message, stop.exit_status) from None


def _shard(text: str) -> tuple[int, int]:
  index, sep, count = text.partition("/")
  if not (sep and index.isdigit() and count.isdigit() and int(index) < int(count)):
    raise argparse.ArgumentTypeError(f"{text!r}: expected I/N with 0 <= I < N, such as 0/2")
  return int(index), int(count)


def _sampler_steps(text: str) -> tuple[str, int]:
  from dit_jax.flow import METHODS
  method, _, steps = text.partition(":")
  if method not in METHODS or not steps.isdigit() or int(steps) < 1:
    raise argparse.ArgumentTypeError(f"expected METHOD:STEPS with METHOD one of {METHODS} and "
                                     f"STEPS >= 1, e.g. ddpm:250, got {text!r}")
  return method, int(steps)


def _seed_list(text: str) -> tuple[int, ...]:
  parts = text.split(",")
  if not all(p.strip().isdigit() for p in parts):
    raise argparse.ArgumentTypeError(f"{text!r}: expected seeds such as 0 or 0,2")
  return tuple(int(p) for p in parts)


def cmd_sweep(args, overrides):
  from dit_jax import sweep_report  # matplotlib: only when summarising
  base, spec = sweep.load(args.config, overrides)
  if args.seeds is not None:
    spec = sweep.with_seeds(spec, args.seeds)
  root = Path(args.workdir)
  runs = sweep.expand(spec, root)
  print(f"sweep {spec.title!r}: {len(runs)} runs ({len(runs) // len(spec.seeds)} settings x "
        f"{len(spec.seeds)} seeds) in {root}")
  failed = 0
  if args.report:
    pass  # only the summary below
  elif args.parallel > 1:
    argv = ["--config", args.config, "--workdir", args.workdir,
            *[f"--config.{o}" for o in overrides],
            *(["--seeds", ",".join(map(str, spec.seeds))] if args.seeds is not None else [])]
    failed = sweep.run_side_by_side(argv, args.parallel, args.devices_per_run, root)
  else:
    status = _until_preempted("sweep", lambda: sweep.run_all(base, spec, root, args.shard))
    print(", ".join(f"{count} {what}" for what, count in status.items()))
    failed = status["failed"]
  if args.shard == (0, 1):  # a side-by-side worker leaves the summary to its parent
    paths = sweep_report.write(spec, root)
    print(paths["table"].read_text())
    print(f"wrote {paths['results']}, {paths['table']} and {len(paths['plots'])} plots; "
          f"{paths['finished']} of {len(runs)} runs finished")
  if failed:
    raise CommandError(f"dit-jax sweep: {failed} {'workers' if args.parallel > 1 else 'runs'} "
                       f"failed (error.txt in their run directories, logs in {root / 'logs'}); "
                       "rerun the same command to retry them", STATUS_FAILED)


def _mesh_fields(spec: str) -> dict:
  fields = {}
  for item in filter(None, spec.split(",")):
    key, sep, value = item.partition("=")
    if not sep or not (key == "rules" or value.lstrip("-").isdigit()):
      raise InputError(f"--mesh {spec!r}: expected key=value items with whole-number sizes, "
                       "such as data=2,fsdp=4,rules=fsdp")
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
      raise InputError(f"{preset_flags} set a preset's fields; with --config set them in the "
                       "config, e.g. --config.model.dtype=bfloat16 "
                       "--config.model.attention_backend=cudnn")
    config = apply_overrides(load_config(args.config), overrides)
    return (config.model.name, create_model(config.model), model_input_shape(config.data),
            config)
  if overrides:
    raise InputError(f"--config.* overrides need --config: got {overrides}")
  get = lambda k: BENCH_DEFAULTS[k] if getattr(args, k) is None else getattr(args, k)
  name = get("model") if get("model").startswith("DiT-") else f"DiT-{get('model')}"
  model = dit(name, dtype=jnp.dtype(get("dtype")), attention_backend=get("attention"),
              scan_layers=args.scan, remat_policy=get("remat"))
  side = args.image_size // args.latent_downsample
  return name, model, (side, side, args.channels), None


def cmd_bench(args, overrides):
  import jax

  from dit_jax.perf import bench
  name, model, image_shape, config = bench_model(args, overrides)
  mesh = _mesh_fields(args.mesh)
  if args.sample:
    sample_config = dict(method=args.sample[0], steps=args.sample[1], cfg_scale=args.cfg_scale,
                         shift=1.0, eta=0.0)
    result = bench.bench_sample(model, image_shape, args.batch_size, sample_config,
                                repeats=args.steps, mesh_config=mesh, config=config)
  else:
    result = bench.bench_train_step(model, image_shape, args.batch_size, steps=args.steps,
                                    mesh_config=mesh, config=config, profile_dir=args.profile)
  # Fields a family may lack (the U-Net has no scan) are reported as None.
  design = {k: getattr(model, f, None) for k, f in (("attention", "attention_backend"),
            ("scan", "scan_layers"), ("remat", "remat_policy"))}
  design["dtype"] = str(np.dtype(model.dtype))
  row = dict(model=name, batch=args.batch_size, input=list(image_shape), **design,
             devices=len(jax.devices()), device=jax.devices()[0].device_kind, **result.as_dict())
  if args.format == "json":
    print(json.dumps(row))
    return
  head = (f"{name} batch {args.batch_size} {row['dtype']} attention={row['attention']} "
          f"scan={row['scan']} remat={row['remat']} on {row['devices']} x {row['device']}: ")
  if args.sample:
    print(head + f"{args.sample[0]} {args.sample[1]} steps, guidance {args.cfg_scale}: "
          f"{row['images_per_s']:.1f} images/s, {row['batch_s']:.2f} s per batch, "
          f"{row['tflops_per_s']:.1f} TFLOP/s per device, compile {row['compile_s']:.1f} s")
    return
  memory = f"{row['memory_gib']:.2f} GiB" if row["memory_gib"] else "n/a"
  print(head + f"{row['images_per_s']:.1f} images/s, {row['step_ms']:.1f} ms/step, "
        f"{row['train_tflops_per_s']:.1f} TFLOP/s per device, step memory {memory}, "
        f"compile {row['compile_s']:.1f} s")
  for p in (row["profile"] or [])[:20]:
    print(f"  {p['kind']:<13} {p['region']:<40} {p['ms']:9.2f} ms/step {p['kernels']:6.0f} "
          f"kernels {p['share']:6.1%}")


def cmd_aot(args, overrides):
  import copy

  import jax
  jax.config.update("jax_platforms", "cpu")  # compile-only devices; no TPU or GPU is looked for
  from dit_jax.perf import aot
  config = validate(apply_overrides(load_config(args.config), overrides))
  target = aot.Target.create(args.topology, args.num_slices)
  _, report = aot.compile_step(config, target, args.step, args.batch_size)

  def variant(**fields):
    changed = copy.deepcopy(config)
    changed.model.update(fields)
    return aot.compile_step(changed, target, args.step, args.batch_size)[1]

  if args.attention_baseline and report.attention not in ("xla", "n/a"):
    report.xla_attention_total = variant(attention_backend="xla").memory["total"]
  try:
    aot.check_fits(report, variant)
  finally:
    print(json.dumps(report.as_dict()) if args.format == "json" else aot.format_table(report))


def cmd_train_vae(args, overrides):
  from dit_jax.training import autoencoder
  config = apply_overrides(load_config(args.config), overrides)
  start = time.perf_counter()
  _until_preempted("train-vae", lambda: autoencoder.train_vae(config, args.workdir))
  stats = json.loads((Path(args.workdir) / "eval.json").read_text())
  print(f"trained in {time.perf_counter() - start:.0f} s: {config.vae_train.eval_split} PSNR "
        f"{stats['psnr']:.2f} dB, scaling_factor {stats['scaling_factor']}; --vae "
        f"{args.workdir} (the VAE folder is {Path(args.workdir) / 'vae'})")


def cmd_extract_latents(args, overrides):
  from dit_jax.sampling import latents
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
  """--labels (parsed by _label_list), checked against the model, or --per-class of each class."""
  if args.labels:
    labels = np.array(args.labels, np.int32)
    if num_classes and labels.max() > num_classes:
      raise InputError(f"--labels {','.join(map(str, args.labels))}: this model has "
                       f"{num_classes} classes, so labels lie in 0..{num_classes} "
                       f"({num_classes} is the null class, unconditional samples)")
    return labels
  return np.repeat(np.arange(max(num_classes, 1)), args.per_class).astype(np.int32)


def _progress(generate, desc: str, total: int, *args):
  """Runs generate(*args, progress=update) under a progress bar on stderr; yields its items."""
  from tqdm import tqdm
  with tqdm(total=total, desc=desc, unit="image", dynamic_ncols=True) as bar:
    yield from generate(*args, progress=bar.update)


def _sample_many(args, sampler, state, num_classes: int, rng):
  """--num N: N samples with uniform labels, sampled in resumable chunks into --out .npz."""
  import jax
  from tqdm import tqdm

  from dit_jax.sampling.sample_set import sample_to_npz
  from dit_jax.sampling.sampler import uniform_labels
  if not args.out.endswith(".npz"):
    raise InputError(f"--num {args.num} writes a sample set: name it --out FILE.npz")
  labels = uniform_labels(args.num, num_classes, args.seed)
  with tqdm(total=args.num, desc="sample", unit="image", dynamic_ncols=True) as bar:
    drawn = sample_to_npz(sampler, state.ema_params, labels, args.out,
                          batch_size=args.batch_size, rng=rng, cfg_scale=args.cfg_scale,
                          chunk_size=args.chunk_size, write=jax.process_index() == 0,
                          progress=bar.update)
  print(f"wrote {args.num} samples of step {int(state.step)} to {args.out} ({drawn} drawn now, "
        f"{args.num - drawn} from earlier chunks; labels uniform over {num_classes} classes)")


def cmd_eval(args, overrides):
  from dit_jax.eval.evaluate import evaluate, load_reference
  from dit_jax.eval.features import Extractor
  from dit_jax.sampling import images
  extractor = Extractor(_feature_net_of(args), args.batch_size)
  reference = load_reference(args.ref, extractor)
  samples, labels = images.load_npz_images(args.samples)
  scores = evaluate(extractor, samples, reference, labels)
  print(format_scores({"samples": len(samples), **scores}, args.format))


def _feature_net_of(args):
  from dit_jax.eval.evaluate import feature_net
  spec = f"inception:{args.inception}" if args.inception else args.features
  return feature_net(spec, args.data_dir)


def cmd_eval_ref(args, overrides):
  from dit_jax import data
  from dit_jax.eval.evaluate import Reference
  from dit_jax.eval.features import Extractor
  from dit_jax.sampling import images
  extractor = Extractor(_feature_net_of(args), args.batch_size)
  if args.images:
    real, _ = images.load_npz_images(args.images)
    real = real[:args.num]
  elif args.latents:  # the images the latents were encoded from
    from dit_jax.data.latent_source import read_meta
    meta = read_meta(args.latents)
    real, _ = data.read_images(meta["name"], meta["split"], args.data_dir, meta["image_size"],
                               args.num)
  else:
    real, _ = data.read_images(args.data, args.split, args.data_dir, args.image_size, args.num)
  Reference.of_features(extractor.net, extractor(real)).save(args.out)
  print(f"wrote {extractor.net.name} reference statistics of {len(real)} images to {args.out}")


def cmd_train_classifier(args, overrides):
  from dit_jax.eval.classifier import cache_dir, classifier_net, train_classifier
  if args.force or not (cache_dir(args.data, args.data_dir) / "classifier.json").exists():
    train_classifier(args.data, args.data_dir, args.steps)
  info = classifier_net(args.data, args.data_dir, train=False).info
  print(f"{args.data} classifier: test accuracy {info['test_accuracy']:.4f}, train "
        f"{info['train_accuracy']:.4f} ({info['steps']} steps); in "
        f"{cache_dir(args.data, args.data_dir)}")


def cmd_convert(args, overrides):
  from dit_jax.convert import dit as convert_dit
  if (args.src is None) == (args.dst is None):
    raise InputError("pass exactly one of --from pytorch (import) or --to pytorch (export)")
  if args.src:
    info = convert_dit.convert_file(args.inp, args.out, args.model, args.num_heads)
  else:
    info = convert_dit.export_file(args.inp, args.out)
  print(f"wrote {args.out}: {info.get('model') or 'DiT'} {convert_dit.describe(info)}")


def cmd_sample_converted(args):
  from dit_jax.sampling.converted import sample_converted
  print(sample_converted(args.converted, args.out, labels=args.labels, method=args.method,
                         steps=args.steps, cfg_scale=args.cfg_scale,
                         guide_channels=args.guide_channels, seed=args.seed, vae=args.vae))


def _sample_captions(args, config, sampler, state):
  """A caption-conditioned run: --per-class samples for each ';'-separated caption."""
  import jax

  from dit_jax.data.tokenizers import caption_condition
  from dit_jax.sampling import images
  if not args.captions:
    raise InputError("this model is conditioned on captions: pass --captions 'a red circle at "
                     "the top left;a blue square in the centre' (';' between captions)")
  captions = [c.strip() for c in args.captions.split(";") if c.strip()]
  cond = {key: np.repeat(value, args.per_class, axis=0)
          for key, value in caption_condition(config.data, captions).items()}
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

  from dit_jax import flow, parallel
  from dit_jax.sampling import images, latents
  from dit_jax.sampling.sampler import ImageSampler, sample_in_batches
  from dit_jax.sampling import runs
  # A sample set (--num) is drawn data parallel over every device of every process.
  plan = parallel.ShardingPlan.create() if args.num else None
  config, state = runs.load_run(args.workdir, plan)
  for key, value in (("steps", args.steps), ("method", args.method),
                     ("cfg_scale", args.cfg_scale)):
    if value is not None:
      config.sample[key] = value
  validate(config)  # e.g. --method heun on a DDPM run, a negative --cfg-scale
  if args.vae:
    config.data.vae = args.vae
  model = create_model(config.model)
  sampler = ImageSampler(model, flow.make_objective(config.objective), config.sample,
                         model_input_shape(config.data), plan, decode=latents.decoder_for(config))
  rng = jax.random.PRNGKey(args.seed)
  spec = model.condition_spec
  if "text" in spec:
    raise InputError(f"{config.model.name} reads cond 'text' ({spec['text'].meaning}), which the "
                     "CLI cannot make from --captions: it needs precomputed text embeddings; "
                     "sample with ImageSampler.sample(params, cond) and cond from "
                     "dit_jax.data.text_embeddings.load_text_embeddings(FILE.npz)")
  if "text_tokens" in spec:
    return _sample_captions(args, config, sampler, state)
  if set(spec) - {"label"}:
    raise InputError(f"{config.model.name} reads {sorted(spec)}: the CLI samples class labels "
                     "(--labels, --per-class) or captions (--captions) only")
  if args.num:
    return _sample_many(args, sampler, state, class_count(model), rng)
  labels = _sample_labels(args, class_count(model))
  chunks = _progress(sample_in_batches, "sample", len(labels), sampler, state.ema_params,
                     labels, min(args.batch_size, len(labels)), rng, args.cfg_scale)
  if args.out.endswith(".npz"):  # streamed: memory holds one batch of samples
    images.save_npz_chunks(chunks, labels, args.out)
  else:
    samples = np.concatenate(list(chunks))
    rows = max(class_count(model), 1) if not args.labels else 1
    images.save_png(images.make_grid(samples, rows), args.out,
                    upscale=max(1, 64 // samples.shape[1]))
  print(f"wrote {len(labels)} samples of step {int(state.step)} to {args.out}")


# Flag types: argparse turns their ArgumentTypeError into "argument --flag: <message>", exit 2.

def _int_at_least(low: int):
  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}") from None
    if value < low:
      raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value
  return parse


_positive = _int_at_least(1)
_non_negative = _int_at_least(0)


def _finite_float(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    value = math.nan
  if not math.isfinite(value):
    raise argparse.ArgumentTypeError(f"expected a finite number such as 1.5, got {text!r}")
  return value


def _label_list(text: str) -> list[int]:
  try:
    labels = [int(v) for v in text.split(",")]
  except ValueError:
    labels = []
  if not labels or min(labels) < 0:
    raise argparse.ArgumentTypeError(f"expected class labels >= 0 separated by commas, such as "
                                     f"3,1,4; got {text!r}")
  return labels


def _existing(what: str, *suffixes: str):
  """An existing directory, or with `suffixes` an existing file named with one of them."""
  def parse(text: str) -> str:
    path = Path(text)
    if not (path.is_file() if suffixes else path.is_dir()):
      problem = ("does not exist" if not path.exists() else "is a directory" if suffixes
                 else "is a file, not a directory")
      raise argparse.ArgumentTypeError(f"{text} {problem}: pass {what}")
    if suffixes and path.suffix not in suffixes:
      raise argparse.ArgumentTypeError(f"{text}: expected {what}")
    return text
  return parse


_RUN_DIR = _existing("the directory of a `dit-jax train` run")
_CONVERTED_DIR = _existing("a directory written by `dit-jax convert --from pytorch`")
_VAE_DIR = _existing("a VAE folder: diffusers AutoencoderKL, a pipeline folder with vae/, or a "
                     "`dit-jax train-vae` workdir")
_NPZ_FILE = _existing("a .npz file", ".npz")


def _check_parents(path: Path, text: str):
  """Missing parent folders are created when writing; an existing one must be a folder."""
  parent = next(p for p in path.absolute().parents if p.exists())
  if not parent.is_dir():
    raise argparse.ArgumentTypeError(f"{text}: {parent} is a file, so nothing can be written "
                                     "under it; choose another path")


def _new_or_dir(text: str) -> str:
  """A directory that is written to (created if missing)."""
  path = Path(text)
  if path.exists() and not path.is_dir():
    raise argparse.ArgumentTypeError(f"{text} is a file: pass a directory (created if missing)")
  _check_parents(path, text)
  return text


def _output_file(*suffixes: str):
  def parse(text: str) -> str:
    path = Path(text)
    if path.suffix not in suffixes:
      raise argparse.ArgumentTypeError(f"{text!r} has no known extension: name the file "
                                       f"{' or '.join('FILE' + s for s in suffixes)}")
    if path.is_dir():
      raise argparse.ArgumentTypeError(f"{text} is a directory: name a file in it, such as "
                                       f"{path / ('samples' + suffixes[0])}")
    _check_parents(path, text)
    return text
  return parse


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="dit-jax", description=__doc__.split("\n")[0])
  parser.add_argument("--debug", action="store_true", help="show the Python traceback of an "
                      "error (this flag may stand anywhere on the command line)")
  commands = parser.add_subparsers(dest="command", required=True)
  p = commands.add_parser("flops", help="analytic forward Gflops and parameters of DiT models",
                          description=flops.__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--models", default="all", help="comma list, e.g. XL/2,B/4 (default: all 12)")
  p.add_argument("--image-size", type=_positive, default=256, help="image side in pixels")
  p.add_argument("--latent-downsample", type=_positive, default=8,
                 help="VAE downsampling factor (1 for pixel-space models)")
  p.add_argument("--channels", type=_positive, default=4, help="channels the model sees")
  p.add_argument("--conditioning", default="adaln_zero", choices=CONDITIONINGS)
  p.add_argument("--num-classes", type=_non_negative, default=1000)
  p.add_argument("--no-learn-sigma", action="store_true", help="output C, not 2C, channels")
  p.add_argument("--config", help="count the model of an ml-collections config instead, "
                 "e.g. configs/dit.py:DiT-B/4, with --config.model.FIELD=VALUE overrides")
  p.add_argument("--xla", action="store_true",
                 help="add XLA's cost analysis of the compiled forward (compiles each model)")
  p.add_argument("--format", default="table", choices=FORMATS)
  p.add_argument("--plot", metavar="FILE.png", type=_output_file(".png", ".pdf", ".svg"),
                 help="draw Gflops vs patch and params vs Gflops")
  p.set_defaults(func=cmd_flops)

  p = commands.add_parser("train", help="train a model from a config; resumes from its workdir")
  p.add_argument("--config", required=True, help="e.g. configs/quickstart.py, with "
                 "--config.section.field=value overrides")
  p.add_argument("--workdir", required=True, type=_new_or_dir,
                 help="checkpoints, logs and samples go here")
  p.add_argument("--multihost", action="store_true", help="join a multi-process run (TPU pod "
                 "slice, SLURM, ...): jax.distributed.initialize() before anything else; "
                 "every process runs the same command")
  p.add_argument("--coordinator", help="host:port of process 0 (--multihost without "
                 "auto-detection)")
  p.add_argument("--num-processes", type=_positive, help="with --coordinator")
  p.add_argument("--process-id", type=_non_negative, help="with --coordinator")
  p.set_defaults(func=cmd_train)

  p = commands.add_parser("sweep", help="train and evaluate every run of a sweep file, then "
                          "tabulate and plot them; rerun to resume", description=sweep.__doc__,
                          formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--config", required=True, help="a sweep file, e.g. configs/sweeps/"
                 "conditioning.py[:gpu], with --config.section.field=value overrides of its "
                 "base run")
  p.add_argument("--workdir", required=True, type=_new_or_dir,
                 help="runs/<run>/seed_<seed>/, results.jsonl, results.md and plots go here")
  p.add_argument("--parallel", type=_positive, default=1, help="runs side by side, each in its "
                 "own process with --devices-per-run devices (GPUs, or fake CPU devices)")
  p.add_argument("--devices-per-run", type=_positive, default=1)
  p.add_argument("--seeds", type=_seed_list, help="only these of the sweep's seeds, e.g. 0 "
                 "(comma-separated; default: all); a later call can add the others")
  p.add_argument("--report", action="store_true", help="only summarise the finished runs")
  p.add_argument("--shard", type=_shard, default=(0, 1), help=argparse.SUPPRESS)
  p.set_defaults(func=cmd_sweep)

  p = commands.add_parser("bench", help="time the sharded train step (or sampler) of a model on "
                          "random data")
  p.add_argument("--model", help="a DiT preset (default DiT-XL/2)")
  p.add_argument("--config", help="time the model of this config instead (e.g. "
                 "configs/mmdit.py:mmdit_hybrid), with --config.section.field=value overrides")
  p.add_argument("--image-size", type=_positive, default=256)
  p.add_argument("--latent-downsample", type=_positive, default=8, help="1 for pixel space")
  p.add_argument("--channels", type=_positive, default=4)
  p.add_argument("--batch-size", type=_positive, default=32, help="global batch")
  p.add_argument("--steps", type=_positive, default=10,
                 help="timed steps (after 2 warm-up steps); with --sample, timed batches")
  p.add_argument("--sample", type=_sampler_steps, help="time the lax.scan sampler instead, "
                 "e.g. ddpm:250 or euler:50 (METHOD:STEPS)")
  p.add_argument("--cfg-scale", type=float, default=4.0, help="--sample: guidance scale")
  p.add_argument("--profile", metavar="DIR", help="then trace a few train steps into DIR "
                 "(jax.profiler, TensorBoard / Perfetto) and print where their kernel time "
                 "goes, by kind (matmul, attention, fusion, collective) and place")
  p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"),
                 help="compute dtype, default bfloat16 (params stay float32)")
  p.add_argument("--attention", choices=BACKENDS, help="attention backend (default auto)")
  p.add_argument("--scan", action="store_true", help="scan over layers (one compiled block)")
  p.add_argument("--remat", choices=tuple(REMAT_POLICIES),
                 help="rematerialisation policy (default none)")
  p.add_argument("--mesh", default="", help="e.g. data=2,fsdp=4,rules=fsdp (default: data "
                 "parallel over all devices)")
  p.add_argument("--format", choices=("table", "json"), default="table")
  p.set_defaults(func=cmd_bench)

  p = commands.add_parser("aot", help="compile the train or sample step for a Cloud TPU slice "
                          "or a GPU host on this machine (no TPU or GPU needed) and report "
                          "memory, flops, collectives", description=None)
  p.add_argument("--config", required=True, help="e.g. configs/dit.py:DiT-XL/2, with "
                 "--config.section.field=value overrides")
  p.add_argument("--topology", required=True, help="a Cloud TPU slice: v4-32, v5e-16 "
                 "(v5litepod-16), v5p-128, v6e-64, ... (v4/v5p count TensorCores); or one "
                 "host of 1, 2, 4 or 8 GPUs: h100, 8xh100, h200, 4xh200")
  p.add_argument("--num-slices", type=_positive, default=1,
                 help="slices joined by DCN (lay them out with --config.mesh.dcn_*)")
  p.add_argument("--step", choices=("train", "sample"), default="train")
  p.add_argument("--batch-size", type=_positive, default=256,
                 help="--step sample: samples per compiled call (as `dit-jax sample`)")
  p.add_argument("--attention-baseline", action="store_true", help="also compile the step "
                 "with XLA attention and report the memory the chosen kernel saves")
  p.add_argument("--format", choices=("table", "json"), default="table")
  p.set_defaults(func=cmd_aot)

  p = commands.add_parser("train-vae", help="train a KL autoencoder (VAE) on a TFDS data set")
  p.add_argument("--config", required=True, help="e.g. configs/vae.py")
  p.add_argument("--workdir", required=True, type=_new_or_dir,
                 help="checkpoints, logs and the exported vae/")
  p.set_defaults(func=cmd_train_vae)

  p = commands.add_parser("extract-latents", help="encode a TFDS split with a VAE into a "
                          "latent data set (resumable; each process encodes its own chunks)")
  p.add_argument("--config", required=True, help="a training config: its data.name, "
                 "data.split, data.data_dir and data.image_size say what to encode")
  p.add_argument("--vae", required=True, type=_VAE_DIR,
                 help="diffusers AutoencoderKL folder, pipeline folder with vae/, or a "
                 "`train-vae` workdir")
  p.add_argument("--out", required=True, type=_new_or_dir,
                 help="folder for the latents (data.latents)")
  p.add_argument("--split", help="override data.split")
  p.add_argument("--flip", action="store_true", help="also encode horizontal flips")
  p.add_argument("--batch-size", type=_positive, default=64, help="images per encoder call")
  p.add_argument("--chunk-size", type=_positive, default=1024,
                 help="examples per file (resume unit)")
  p.add_argument("--dtype", default="float32", choices=("float32", "float16"),
                 help="storage dtype of the posterior moments")
  p.add_argument("--compute-dtype", choices=("float32", "bfloat16"),
                 help="encoder compute dtype (default float32)")
  p.add_argument("--max-chunks", type=_positive, help="stop after this many chunks (rerun resumes)")
  p.set_defaults(func=cmd_extract_latents)

  p = commands.add_parser("sample", help="sample a trained run's EMA model to PNG or NPZ")
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument("--workdir", type=_RUN_DIR, help="a training run's directory")
  source.add_argument("--converted", metavar="DIR", type=_CONVERTED_DIR,
                      help="a published DiT converted with `dit-jax convert` (250-step "
                      "DDPM with learned variance by default)")
  p.add_argument("--vae", metavar="DIR", type=_VAE_DIR,
                 help="VAE folder that decodes latents: for --converted the diffusers SD "
                 "VAE (sd-vae-ft-ema; without it the .npz holds the latents); for a latent "
                 "--workdir it replaces config.data.vae")
  p.add_argument("--captions", help="caption-conditioned runs: ';'-separated captions, one "
                 "grid row (--per-class samples) each")
  p.add_argument("--guide-channels", type=_positive,
                 help="--converted: guide only the first K latent channels (3 reproduces "
                 "the original sampler exactly; default all)")
  p.add_argument("--out", required=True, type=_output_file(".png", ".npz"),
                 help="FILE.png (grid) or FILE.npz (uint8 NHWC images in arr_0, labels in "
                 "labels; written batch by batch); missing folders are created")
  which = p.add_mutually_exclusive_group()
  which.add_argument("--per-class", type=_positive, default=8,
                     help="samples per class (one row each)")
  which.add_argument("--labels", type=_label_list, help="comma list of class labels, e.g. 3,1,4")
  which.add_argument("--num", type=_positive, help="a sample set for evaluation (FID-50K: "
                     "--num 50000): uniform labels, data parallel over every device, written "
                     "to --out FILE.npz in resumable chunks (rerun to continue)")
  p.add_argument("--chunk-size", type=_positive, default=10_000,
                 help="--num: samples per resumable chunk")
  p.add_argument("--cfg-scale", type=_finite_float,
                 help="guidance scale (default: config.sample)")
  p.add_argument("--steps", type=_positive, help="sampler steps (default: config.sample)")
  p.add_argument("--method", choices=("euler", "heun", "ddpm", "ddim"))
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--batch-size", type=_positive, default=256, help="samples per compiled call")
  p.set_defaults(func=cmd_sample)

  def feature_flags(p):
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--inception", metavar="FILE", help="pytorch-fid's FID Inception "
                       "weights (pt_inception-2015-12-05-6726825d.pth, or an .npz/.safetensors "
                       "of that state dict): FID, sFID, IS, precision, recall")
    which.add_argument("--features", metavar="DATA", help="a bundled data set's classifier "
                       "(e.g. digits/8; trained once and cached): FD, IS, precision, recall, "
                       "accuracy")
    p.add_argument("--data-dir", help="TFDS data dir (default ~/tensorflow_datasets)")
    p.add_argument("--batch-size", type=_positive, default=200, help="images per feature call")

  p = commands.add_parser("eval", help="score a sample set against a reference: FID / FD, "
                          "sFID, IS, precision, recall, accuracy")
  p.add_argument("--samples", required=True, type=_NPZ_FILE,
                 help="uint8 images in arr_0 (labels in `labels`), as `dit-jax sample` writes")
  p.add_argument("--ref", required=True, type=_NPZ_FILE,
                 help="`dit-jax eval-ref` output, or an ADM reference batch")
  feature_flags(p)
  p.add_argument("--format", default="table", choices=("table", "json", "markdown", "csv"))
  p.set_defaults(func=cmd_eval)

  p = commands.add_parser("eval-ref", help="reference statistics of real images for `eval`")
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument("--data", help="a TFDS data set (its --split)")
  source.add_argument("--images", type=_NPZ_FILE, help="uint8 images in arr_0")
  source.add_argument("--latents", metavar="DIR", type=_existing(
      "a folder written by `dit-jax extract-latents`"), help="the source images (data set, "
      "split, size) of a latent folder")
  p.add_argument("--split", default="test")
  p.add_argument("--image-size", type=_positive, help="centre crop and resize (as training)")
  p.add_argument("--num", type=_positive, help="only the first N images")
  p.add_argument("--out", required=True, type=_output_file(".npz"))
  feature_flags(p)
  p.set_defaults(func=cmd_eval_ref)

  p = commands.add_parser("train-classifier", help="train (once) the feature net of a bundled "
                          "data set and report its test accuracy")
  p.add_argument("--data", required=True, help="e.g. digits/8, shapes/single_32")
  p.add_argument("--data-dir", help="TFDS data dir (default ~/tensorflow_datasets)")
  p.add_argument("--steps", type=_positive, default=1500)
  p.add_argument("--force", action="store_true", help="train again even when cached")
  p.set_defaults(func=cmd_train_classifier)

  p = commands.add_parser("convert", help="published PyTorch DiT checkpoint <-> dit_jax")
  p.add_argument("--from", dest="src", choices=("pytorch",), help="import a facebookresearch/"
                 "DiT state dict (.pt with torch installed, .safetensors or .npz)")
  p.add_argument("--to", dest="dst", choices=("pytorch",), help="export a converted directory "
                 "back to that layout (.safetensors or .npz)")
  p.add_argument("--in", dest="inp", required=True, help="the file (--from) or directory (--to)")
  p.add_argument("--out", required=True, help="the directory (--from) or file (--to)")
  p.add_argument("--model", help="expected preset, e.g. DiT-XL/2 (default: inferred)")
  p.add_argument("--num-heads", type=_positive, help="head count of a non-preset size")
  p.set_defaults(func=cmd_convert)
  return parser


STATUS_FAILED, STATUS_BAD_INPUT, STATUS_INTERRUPTED = 1, 2, 130

# Errors that mean the input is wrong (ConfigError is a ValueError); see the module docstring.
BAD_INPUT_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError, NotADirectoryError,
                    IsADirectoryError, PermissionError, EOFError, zipfile.BadZipFile,
                    SafetensorError, NotImplementedError, ImportError)
# Errors of a run that started well: divergence, I/O failures (a full disk, a lost mount).
RUN_FAILED_ERRORS = (FloatingPointError, OSError, MemoryError)  # MemoryError: aot does not fit


class CommandError(SystemExit):
  """The exit of a reported error: str() is the message printed on stderr, .code the status
  (so `pytest.raises(SystemExit, match=...)` sees the message, and the shell the status)."""

  def __init__(self, message: str, status: int):
    super().__init__(message)
    self.code = status


def error_status(error: BaseException) -> int | None:
  """The exit status of an expected error, None for an unexpected one (a bug)."""
  if isinstance(error, BAD_INPUT_ERRORS):
    return STATUS_BAD_INPUT
  if isinstance(error, RUN_FAILED_ERRORS):
    return STATUS_FAILED
  if isinstance(error, KeyboardInterrupt):
    return STATUS_INTERRUPTED
  if isinstance(error, SystemExit) and isinstance(error.code, str):  # raise SystemExit("...")
    return STATUS_BAD_INPUT
  return None


def error_message(error: BaseException) -> str:
  """One paragraph: the error's own text, without the quotes KeyError adds or blank lines."""
  if isinstance(error, KeyboardInterrupt):
    return "interrupted"
  if isinstance(error, (KeyError, SystemExit)) and error.args:
    text = str(error.args[0])
  elif isinstance(error, OSError) and error.filename and error.strerror:
    text = f"{error.filename}: {error.strerror}"
  else:
    text = str(error)
  lines = [line.rstrip() for line in text.strip().splitlines() if line.strip()]
  return "\n".join(lines) or type(error).__name__


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  debug = "--debug" in argv
  overrides = [a[len("--config."):] for a in argv if a.startswith("--config.")]
  args = build_parser().parse_args(
      [a for a in argv if not a.startswith("--config.") and a != "--debug"])
  try:
    args.func(args, overrides)
  except (Exception, KeyboardInterrupt, SystemExit) as e:
    status = None if isinstance(e, CommandError) else error_status(e)
    if status is None or debug:
      if status is None and not isinstance(e, SystemExit):
        e.add_note(f"dit-jax {args.command}: unexpected error, likely a bug in dit-jax; please "
                   "report it with this traceback")
      raise
    message = f"dit-jax {args.command}: {error_message(e)}"
    print(message, file=sys.stderr)
    raise CommandError(message, status) from None


if __name__ == "__main__":
  main()
