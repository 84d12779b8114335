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
    dit-jax eval-loss --workdir runs/quickstart --steps 1000,2000 --plot loss_by_t.png
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
stderr, naming the flag, field or file and the fix. Such errors are the library's own
(`dit_jax.errors`, each with its exit status), argparse's, a signal and an OS error of a run
that started; any other error is a bug and shows its traceback. Exit status:
    0    done
    1    the command ran and failed (RunFailedError): training diverged, a step that `aot`
         finds too big for the chip, an I/O error such as a full disk; or an internal error
         (a bug: the traceback is shown)
    2    bad input, as argparse uses it: a bad flag or flag value, a bad --config override
         or config value, a missing, unreadable or malformed file, a missing optional package
    130  interrupted (Ctrl-C) outside training
    128 + signal (143 SIGTERM, 130 SIGINT): `train`, `train-vae` and `sweep` saved the current
         step and stopped on a signal; rerun the same command to resume
`--debug`, anywhere on the command line, re-raises the error to show its traceback.
"""
import argparse
import contextlib
import json
import sys

import jax

from dit_jax import cli_flags as flag
from dit_jax import parallel
from dit_jax.config import apply_overrides, load_config
from dit_jax.convert.dit import convert
from dit_jax.engine import Preempted
from dit_jax.engine.compile_cache import CompilationCache
from dit_jax.errors import DitJaxError, InputError
from dit_jax.eval.evaluate import evaluate_files, write_reference
from dit_jax.models import flops
from dit_jax.sampling.converted import sample_converted
from dit_jax.studies import sweep
from dit_jax.studies.reports import flops_rows, format_rows, format_scores
from dit_jax.studies.sweep_run import run_sweep


def _config(args, overrides):
  return apply_overrides(load_config(args.config), overrides)


def _cache(args):
  """The --compilation-cache of the commands with the flag ('' none); without it, JAX's own
  setting (train, sweep: train.compilation_cache_dir; sample --workdir: the run's)."""
  path = getattr(args, "compilation_cache", None)
  return contextlib.nullcontext() if path is None else CompilationCache(path or None)


def cmd_flops(args, overrides):
  rows = flops_rows(args.models, config=args.config, overrides=overrides,
                    image_size=args.image_size, latent_downsample=args.latent_downsample,
                    channels=args.channels, conditioning=args.conditioning,
                    num_classes=args.num_classes, learn_sigma=not args.no_learn_sigma,
                    with_xla=args.xla)
  print(format_rows(rows, args.format))
  if args.plot:
    from dit_jax.studies.plots import plot_flops  # deferred: matplotlib, only for --plot
    plot_flops(rows, args.plot)
    print(f"wrote {args.plot}", file=sys.stderr)


def cmd_train(args, overrides):
  if args.multihost or args.coordinator:
    parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
  from dit_jax.training import denoiser  # deferred: TFDS and grain (dit_jax.data)
  print(denoiser.train(_config(args, overrides), args.workdir))


def cmd_sweep(args, overrides):
  run_sweep(args.config, args.workdir, overrides, parallel=args.parallel,
            devices_per_run=args.devices_per_run, seeds=args.seeds, runs=args.runs,
            report_only=args.report, shard=args.shard)


def cmd_bench(args, overrides):
  from dit_jax.perf import bench  # deferred: TFDS and grain (dit_jax.data, via training)
  name, model, shape, config = bench.bench_model(
      args.model, config=args.config, overrides=overrides, dtype=args.dtype,
      attention=args.attention, remat=args.remat, scan=args.scan, image_size=args.image_size,
      latent_downsample=args.latent_downsample, channels=args.channels)
  row = bench.bench_row(name, model, shape, args.batch_size, config=config, mesh=args.mesh,
                        steps=args.steps, sample=args.sample, cfg_scale=args.cfg_scale,
                        profile_dir=args.profile)
  print(json.dumps(row) if args.format == "json"
        else bench.format_bench_row(row, args.sample, args.cfg_scale))


def cmd_aot(args, overrides):
  jax.config.update("jax_platforms", "cpu")  # compile-only devices; no TPU or GPU is looked for
  from dit_jax.perf import aot  # deferred: TFDS and grain (dit_jax.data, via training)

  def show(report):
    print(json.dumps(report.as_dict()) if args.format == "json" else aot.format_table(report))
  try:
    show(aot.plan_step(args.config, overrides, args.topology, args.num_slices, args.step,
                       args.batch_size, args.attention_baseline))
  except aot.DoesNotFit as too_big:  # the report too, then the levers and exit status 1
    show(too_big.report)
    raise


def cmd_train_vae(args, overrides):
  from dit_jax.training import autoencoder  # deferred: TFDS and grain (dit_jax.data)
  print(autoencoder.train_vae_summary(_config(args, overrides), args.workdir))


def cmd_extract_latents(args, overrides):
  from dit_jax.sampling import latents  # deferred: TFDS and grain (dit_jax.data)
  print(latents.extract_latents_of(
      _config(args, overrides), args.vae, args.out, split=args.split, flip=args.flip,
      batch_size=args.batch_size, chunk_size=args.chunk_size, dtype=args.dtype,
      compute_dtype=args.compute_dtype, max_chunks=args.max_chunks))


def cmd_sample(args, overrides):
  if args.converted:
    print(sample_converted(args.converted, args.out, labels=args.labels, method=args.method,
                           steps=args.steps, cfg_scale=args.cfg_scale,
                           guide_channels=args.guide_channels, seed=args.seed, vae=args.vae))
    return
  from dit_jax.sampling import draw  # deferred: TFDS and grain (dit_jax.data, for captions)
  print(draw.sample_run(args.workdir, args.out, labels=args.labels, per_class=args.per_class,
                        num=args.num, captions=args.captions, steps=args.steps,
                        method=args.method, cfg_scale=args.cfg_scale, vae=args.vae,
                        seed=args.seed, batch_size=args.batch_size, chunk_size=args.chunk_size,
                        compilation_cache=args.compilation_cache))


def _features(args) -> str:
  return f"inception:{args.inception}" if args.inception else args.features


def cmd_eval(args, overrides):
  scores = evaluate_files(args.samples, args.ref, _features(args), args.data_dir,
                          args.batch_size, log=lambda note: print(note, file=sys.stderr))
  print(format_scores(scores, args.format))


def cmd_eval_ref(args, overrides):
  print(write_reference(args.out, _features(args), image_file=args.images,
                        latents=args.latents, data=args.data, split=args.split,
                        image_size=args.image_size, num=args.num, data_dir=args.data_dir,
                        batch_size=args.batch_size))


def cmd_eval_loss(args, overrides):
  from dit_jax.eval import loss_by_t  # deferred: TFDS and grain (dit_jax.data)
  rows = loss_by_t.evaluate_run(args.workdir, args.steps, t_values=args.t or loss_by_t.DEFAULT_T,
                                num=args.num, split=args.split, batch_size=args.batch_size,
                                seed=args.seed, raw=not args.no_raw, latents=args.latents)
  print(loss_by_t.format_rows(rows, args.format))
  if args.plot:
    from dit_jax.studies.plots import plot_loss_by_t  # deferred: matplotlib, only for --plot
    plot_loss_by_t(rows, args.plot)
    print(f"wrote {args.plot}", file=sys.stderr)


def cmd_train_classifier(args, overrides):
  from dit_jax.eval import classifier  # deferred: TFDS and grain (dit_jax.data)
  info = classifier.ensure_classifier(args.data, args.data_dir, args.steps, args.force)
  print(f"{args.data} classifier: test accuracy {info['test_accuracy']:.4f}, train "
        f"{info['train_accuracy']:.4f} ({info['steps']} steps); in {info['cache']}")


def cmd_convert(args, overrides):
  if (args.src is None) == (args.dst is None):
    raise InputError("pass exactly one of --from pytorch (import) or --to pytorch (export)")
  print(convert(args.inp, args.out, to_pytorch=bool(args.dst), model=args.model,
                num_heads=args.num_heads))


# command: (help, the function adding its flags, the description of its --help, or None);
# it runs cmd_<command>.
COMMANDS = {
    "flops": ("analytic forward Gflops and parameters of DiT models", flag.flops_flags,
              flops.__doc__),
    "train": ("train a model from a config; resumes from its workdir", flag.train_flags, None),
    "sweep": ("train and evaluate every run of a sweep file, then tabulate and plot them; "
              "rerun to resume", flag.sweep_flags, sweep.__doc__),
    "bench": ("time the sharded train step (or sampler) of a model on random data",
              flag.bench_flags, None),
    "aot": ("compile the train or sample step for a Cloud TPU slice or a GPU host on this "
            "machine (no TPU or GPU needed) and report memory, flops, collectives",
            flag.aot_flags, None),
    "train-vae": ("train a KL autoencoder (VAE) on a TFDS data set", flag.train_vae_flags, None),
    "extract-latents": ("encode a TFDS split with a VAE into a latent data set (resumable; "
                        "each process encodes its own chunks)", flag.extract_latents_flags, None),
    "sample": ("sample a trained run's EMA model to PNG or NPZ", flag.sample_flags, None),
    "eval": ("score a sample set against a reference: FID / FD, sFID, IS, precision, recall, "
             "accuracy", flag.eval_flags, None),
    "eval-ref": ("reference statistics of real images for `eval`", flag.eval_ref_flags, None),
    "eval-loss": ("a run's loss by noise level: its objective on a fixed held-out batch at "
                  "fixed times t and noise, EMA and raw parameters", flag.eval_loss_flags,
                  None),
    "train-classifier": ("train (once) the feature net of a bundled data set and report its "
                         "test accuracy", flag.train_classifier_flags, None),
    "convert": ("published PyTorch DiT checkpoint <-> dit_jax", flag.convert_flags, None),
}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="dit-jax", description=__doc__.split("\n")[0])
  parser.add_argument("--debug", action="store_true", help="show the Python traceback of an "
                      "error (this flag may stand anywhere on the command line)")
  commands = parser.add_subparsers(dest="command", required=True)
  for name, (help_text, add_flags, description) in COMMANDS.items():
    p = commands.add_parser(name, help=help_text, description=description,
                            formatter_class=argparse.RawTextHelpFormatter if description
                            else argparse.HelpFormatter)
    add_flags(p)
    p.set_defaults(func=globals()["cmd_" + name.replace("-", "_")])  # looked up now: patchable
  return parser


STATUS_FAILED, STATUS_BAD_INPUT, STATUS_INTERRUPTED = 1, 2, 130


class CommandError(SystemExit):
  """The exit of a reported error: str() is the message printed on stderr, .code the status
  (so `pytest.raises(SystemExit, match=...)` sees the message, and the shell the status)."""

  def __init__(self, message: str, status: int):
    super().__init__(message)
    self.code = status


def error_status(error: BaseException) -> int | None:
  """The exit status of an error reported without a traceback; None for a bug."""
  if isinstance(error, (DitJaxError, Preempted)):
    return error.exit_status
  if isinstance(error, KeyboardInterrupt):
    return STATUS_INTERRUPTED
  if isinstance(error, OSError):  # of a run that started: a full disk, a lost mount
    return STATUS_FAILED
  return None


def error_message(error: BaseException) -> str:
  """One paragraph: the error's own text, without blank lines."""
  if isinstance(error, KeyboardInterrupt):
    return "interrupted"
  if isinstance(error, OSError) and error.filename and error.strerror:
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
    with _cache(args):
      args.func(args, overrides)
  except (Exception, KeyboardInterrupt) as e:
    status = error_status(e)
    if status is None:
      e.add_note(f"dit-jax {args.command}: unexpected error, likely a bug in dit-jax; please "
                 "report it with this traceback")
    if status is None or debug:
      raise
    message = f"dit-jax {args.command}: {error_message(e)}"
    print(message, file=sys.stderr)
    raise CommandError(message, status) from None


if __name__ == "__main__":
  main()
