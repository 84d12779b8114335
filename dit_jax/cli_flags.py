"""The flags of `dit-jax`: one function adding each command's flags to its parser, and the flag
types that check a value. argparse turns their ArgumentTypeError into "argument --flag:
<message>" and exit status 2, before any command runs."""
import argparse
import math
from pathlib import Path

from dit_jax import paths
from dit_jax.errors import DitJaxError
from dit_jax.flow import METHODS
from dit_jax.models.dit import CONDITIONINGS, REMAT_POLICIES
from dit_jax.nn.attention import BACKENDS
from dit_jax.studies.reports import FORMATS


def int_at_least(low: int):
  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}") from None
    if value < low:
      raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value
  return parse


positive = int_at_least(1)
non_negative = int_at_least(0)


def finite_float(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    value = math.nan
  if not math.isfinite(value):
    raise argparse.ArgumentTypeError(f"expected a finite number such as 1.5, got {text!r}")
  return value


def label_list(text: str) -> list[int]:
  try:
    labels = [int(v) for v in text.split(",")]
  except ValueError:
    labels = []
  if not labels or min(labels) < 0:
    raise argparse.ArgumentTypeError(f"expected class labels >= 0 separated by commas, such as "
                                     f"3,1,4; got {text!r}")
  return labels


def shard(text: str) -> tuple[int, int]:
  index, sep, count = text.partition("/")
  if not (sep and index.isdigit() and count.isdigit() and int(index) < int(count)):
    raise argparse.ArgumentTypeError(f"{text!r}: expected I/N with 0 <= I < N, such as 0/2")
  return int(index), int(count)


def sampler_steps(text: str) -> tuple[str, int]:
  method, _, steps = text.partition(":")
  if method not in METHODS or not steps.isdigit() or int(steps) < 1:
    raise argparse.ArgumentTypeError(f"expected METHOD:STEPS with METHOD one of {METHODS} and "
                                     f"STEPS >= 1, e.g. ddpm:250, got {text!r}")
  return method, int(steps)


def seed_list(text: str) -> tuple[int, ...]:
  parts = text.split(",")
  if not all(p.strip().isdigit() for p in parts):
    raise argparse.ArgumentTypeError(f"{text!r}: expected seeds such as 0 or 0,2")
  return tuple(int(p) for p in parts)


def run_list(text: str) -> tuple[str, ...]:
  names = tuple(p.strip() for p in text.split(","))
  if not all(names):
    raise argparse.ArgumentTypeError(f"{text!r}: expected run names such as S/4 or S/4,B/2")
  return names


def _in_bucket(text: str, *, exists: bool = False) -> str:
  """A gs:// path (whose bucket must exist; with `exists`, so must the folder), or a clear
  error: a missing [gcs] extra, an unknown bucket, refused credentials."""
  try:
    paths.check_bucket(text)
    if exists and not paths.list_names(text):
      raise argparse.ArgumentTypeError(f"{text} does not exist (nothing is stored under it)")
  except DitJaxError as e:
    raise argparse.ArgumentTypeError(str(e)) from None
  return text


def step_list(text: str) -> list[int]:
  parts = text.split(",")
  if not all(p.strip().isdigit() and int(p) > 0 for p in parts):
    raise argparse.ArgumentTypeError(f"{text!r}: expected checkpoint steps such as 1000 or "
                                     "500,1000")
  return [int(p) for p in parts]


def time_list(text: str) -> tuple[float, ...]:
  try:
    times = tuple(float(p) for p in text.split(","))
  except ValueError:
    times = ()
  if not times or not all(0 <= t <= 1 for t in times):
    raise argparse.ArgumentTypeError(f"{text!r}: expected times in [0, 1] (0 noise, 1 data) "
                                     "separated by commas, such as 0.2,0.5,0.8")
  return times


def existing(what: str, *suffixes: str):
  """An existing directory, or with `suffixes` an existing file named with one of them."""
  def parse(text: str) -> str:
    if paths.is_remote(text):  # a file or a folder: something stored under that name
      if suffixes and paths.as_path(text).suffix not in suffixes:
        raise argparse.ArgumentTypeError(f"{text}: expected {what}")
      return _in_bucket(text, exists=True)
    path = Path(paths.as_path(text))  # local here (as_path refuses a gs:/ that lost a slash)
    if not (path.is_file() if suffixes else path.is_dir()):
      problem = ("does not exist" if not path.exists() else "is a directory" if suffixes
                 else "is a file, not a directory")
      raise argparse.ArgumentTypeError(f"{text} {problem}: pass {what}")
    if suffixes and path.suffix not in suffixes:
      raise argparse.ArgumentTypeError(f"{text}: expected {what}")
    return text
  return parse


RUN_DIR = existing("the directory of a `dit-jax train` run")
CONVERTED_DIR = existing("a directory written by `dit-jax convert --from pytorch`")
VAE_DIR = existing("a VAE folder: diffusers AutoencoderKL, a pipeline folder with vae/, or a "
                   "`dit-jax train-vae` workdir")
LATENT_DIR = existing("a folder written by `dit-jax extract-latents`")
NPZ_FILE = existing("a .npz file", ".npz")


def _check_parents(path: Path, text: str):
  """Missing parent folders are created when writing; an existing one must be a folder."""
  parent = next(p for p in path.absolute().parents if p.exists())
  if not parent.is_dir():
    raise argparse.ArgumentTypeError(f"{text}: {parent} is a file, so nothing can be written "
                                     "under it; choose another path")


def new_or_dir(text: str) -> str:
  """A directory that is written to (created if missing); in a bucket, its bucket exists."""
  if paths.is_remote(text):
    return _in_bucket(text)
  path = Path(paths.as_path(text))  # local here: pathlib has is_symlink and readlink
  if path.is_symlink() and not path.exists():  # mkdir would say only "File exists"
    raise argparse.ArgumentTypeError(f"{text} is a dangling symbolic link (to {path.readlink()}"
                                     f", which does not exist): create its target, or remove "
                                     "the link, or pass another directory")
  if path.exists() and not path.is_dir():
    raise argparse.ArgumentTypeError(f"{text} is a file: pass a directory (created if missing)")
  _check_parents(path, text)
  return text


def output_file(*suffixes: str):
  def parse(text: str) -> str:
    if paths.as_path(text).suffix not in suffixes:
      raise argparse.ArgumentTypeError(f"{text!r} has no known extension: name the file "
                                       f"{' or '.join('FILE' + s for s in suffixes)}")
    if paths.is_remote(text):
      return _in_bucket(text)
    path = Path(text)  # local here
    if path.is_dir():
      raise argparse.ArgumentTypeError(f"{text} is a directory: name a file in it, such as "
                                       f"{path / ('samples' + suffixes[0])}")
    _check_parents(path, text)
    return text
  return parse


# ------------------------------------------------------------------------------------------
# The flags of each command

def _config_flag(p, required=True, example="configs/quickstart.py", what=""):
  p.add_argument("--config", required=required, help=f"{what}e.g. {example}, with "
                 "--config.section.field=value overrides")


def _cache_flag(p, default: str = "JAX's own setting (JAX_COMPILATION_CACHE_DIR)"):
  p.add_argument("--compilation-cache", metavar="DIR", help="JAX's persistent compilation "
                 "cache, local or gs://: what one call compiles, the next loads ('' none; "
                 f"default: {default})")


def _model_flags(p):
  p.add_argument("--image-size", type=positive, default=256, help="image side in pixels")
  p.add_argument("--latent-downsample", type=positive, default=8,
                 help="VAE downsampling factor (1 for pixel-space models)")
  p.add_argument("--channels", type=positive, default=4, help="channels the model sees")


def flops_flags(p):
  p.add_argument("--models", default="all", help="comma list, e.g. XL/2,B/4 (default: all 12)")
  _model_flags(p)
  p.add_argument("--conditioning", default="adaln_zero", choices=CONDITIONINGS)
  p.add_argument("--num-classes", type=non_negative, default=1000)
  p.add_argument("--no-learn-sigma", action="store_true", help="output C, not 2C, channels")
  _config_flag(p, False, "configs/dit.py:DiT-B/4", "count the model of a config instead, ")
  p.add_argument("--xla", action="store_true",
                 help="add XLA's cost analysis of the compiled forward (compiles each model)")
  p.add_argument("--format", default="table", choices=FORMATS)
  p.add_argument("--plot", metavar="FILE.png", type=output_file(".png", ".pdf", ".svg"),
                 help="draw Gflops vs patch and params vs Gflops")


def train_flags(p):
  _config_flag(p)
  p.add_argument("--workdir", required=True, type=new_or_dir,
                 help="checkpoints, logs and samples go here")
  p.add_argument("--multihost", action="store_true", help="join a multi-process run (TPU pod "
                 "slice, SLURM, ...): jax.distributed.initialize() before anything else; "
                 "every process runs the same command")
  p.add_argument("--coordinator", help="host:port of process 0 (--multihost without "
                 "auto-detection)")
  p.add_argument("--num-processes", type=positive, help="with --coordinator")
  p.add_argument("--process-id", type=non_negative, help="with --coordinator")


def sweep_flags(p):
  _config_flag(p, example="configs/sweeps/conditioning.py[:gpu]", what="a sweep file, ")
  p.add_argument("--workdir", required=True, type=new_or_dir,
                 help="runs/<run>/seed_<seed>/, results.jsonl, results.md and plots go here")
  p.add_argument("--parallel", type=positive, default=1, help="runs side by side, each in "
                 "its own process with --devices-per-run devices (GPUs, or fake CPU devices)")
  p.add_argument("--devices-per-run", type=positive, default=1)
  p.add_argument("--seeds", type=seed_list, help="only these of the sweep's seeds, e.g. 0 "
                 "(comma-separated; default: all); a later call can add the others")
  p.add_argument("--runs", type=run_list, help="only these of the sweep's named runs, e.g. "
                 "S/4,B/2 (comma-separated; default: all); a later call can add the others")
  p.add_argument("--report", action="store_true", help="only summarise the finished runs")
  p.add_argument("--shard", type=shard, default=(0, 1), help=argparse.SUPPRESS)


def bench_flags(p):
  p.add_argument("--model", help="a DiT preset (default DiT-XL/2)")
  _config_flag(p, False, "configs/mmdit.py:mmdit_hybrid", "time the model of a config instead, ")
  _model_flags(p)
  p.add_argument("--batch-size", type=positive, default=32, help="global batch")
  p.add_argument("--steps", type=positive, default=10,
                 help="timed steps (after 2 warm-up steps); with --sample, timed batches")
  p.add_argument("--sample", type=sampler_steps, help="time the lax.scan sampler instead, "
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
  _cache_flag(p, "JAX's own setting; with a cache, compile_s is the time to load the step")


def aot_flags(p):
  _config_flag(p, example="configs/dit.py:DiT-XL/2")
  p.add_argument("--topology", required=True, help="a Cloud TPU slice: v4-32, v5e-16 "
                 "(v5litepod-16), v5p-128, v6e-64, ... (v4/v5p count TensorCores); or one "
                 "host of 1, 2, 4 or 8 GPUs: h100, 8xh100, h200, 4xh200")
  p.add_argument("--num-slices", type=positive, default=1,
                 help="slices joined by DCN (lay them out with --config.mesh.dcn_*)")
  p.add_argument("--step", choices=("train", "sample"), default="train")
  p.add_argument("--batch-size", type=positive, default=256,
                 help="--step sample: samples per compiled call (as `dit-jax sample`)")
  p.add_argument("--attention-baseline", action="store_true", help="also compile the step "
                 "with XLA attention and report the memory the chosen kernel saves")
  p.add_argument("--format", choices=("table", "json"), default="table")


def train_vae_flags(p):
  _config_flag(p, example="configs/vae.py")
  p.add_argument("--workdir", required=True, type=new_or_dir,
                 help="checkpoints, logs and the exported vae/")


def extract_latents_flags(p):
  _config_flag(p, example="configs/latent_quickstart.py", what="a training config (its data.* "
               "fields say what to encode), ")
  p.add_argument("--vae", required=True, type=VAE_DIR, help="diffusers AutoencoderKL "
                 "folder, pipeline folder with vae/, or a `train-vae` workdir")
  p.add_argument("--out", required=True, type=new_or_dir,
                 help="folder for the latents (data.latents)")
  p.add_argument("--split", help="override data.split")
  p.add_argument("--flip", action="store_true", help="also encode horizontal flips")
  p.add_argument("--batch-size", type=positive, default=64, help="images per encoder call")
  p.add_argument("--chunk-size", type=positive, default=1024,
                 help="examples per file (resume unit)")
  p.add_argument("--dtype", default="float32", choices=("float32", "float16"),
                 help="storage dtype of the posterior moments")
  p.add_argument("--compute-dtype", choices=("float32", "bfloat16"),
                 help="encoder compute dtype (default float32)")
  p.add_argument("--max-chunks", type=positive,
                 help="stop after this many chunks (rerun resumes)")


def sample_flags(p):
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument("--workdir", type=RUN_DIR, help="a training run's directory")
  source.add_argument("--converted", metavar="DIR", type=CONVERTED_DIR,
                      help="a published DiT converted with `dit-jax convert` (250-step "
                      "DDPM with learned variance by default)")
  p.add_argument("--vae", metavar="DIR", type=VAE_DIR,
                 help="VAE folder that decodes latents: for --converted the diffusers SD "
                 "VAE (sd-vae-ft-ema; without it the .npz holds the latents); for a latent "
                 "--workdir it replaces config.data.vae")
  p.add_argument("--captions", help="caption-conditioned runs: ';'-separated captions, one "
                 "grid row (--per-class samples) each")
  p.add_argument("--guide-channels", type=positive,
                 help="--converted: guide only the first K latent channels (3 reproduces "
                 "the original sampler exactly; default all)")
  p.add_argument("--out", required=True, type=output_file(".png", ".npz"),
                 help="FILE.png (grid) or FILE.npz (uint8 NHWC images in arr_0, labels in "
                 "labels; written batch by batch); missing folders are created")
  which = p.add_mutually_exclusive_group()
  which.add_argument("--per-class", type=positive, default=8,
                     help="samples per class (one row each)")
  which.add_argument("--labels", type=label_list,
                     help="comma list of class labels, e.g. 3,1,4")
  which.add_argument("--num", type=positive, help="a sample set for evaluation (FID-50K: "
                     "--num 50000): uniform labels, data parallel over every device, written "
                     "to --out FILE.npz in resumable chunks (rerun to continue)")
  p.add_argument("--chunk-size", type=positive, default=10_000,
                 help="--num: samples per resumable chunk")
  p.add_argument("--cfg-scale", type=finite_float,
                 help="guidance scale (default: config.sample)")
  p.add_argument("--steps", type=positive, help="sampler steps (default: config.sample)")
  p.add_argument("--method", choices=("euler", "heun", "ddpm", "ddim"))
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--batch-size", type=positive, default=256,
                 help="samples per compiled call")
  _cache_flag(p, "--workdir: the run's own (train.compilation_cache_dir); --converted: "
                 "JAX's own setting")


def _feature_flags(p):
  which = p.add_mutually_exclusive_group(required=True)
  which.add_argument("--inception", metavar="FILE", help="pytorch-fid's FID Inception weights "
                     "(pt_inception-2015-12-05-6726825d.pth, or an .npz/.safetensors of that "
                     "state dict): FID, sFID, IS, precision, recall")
  which.add_argument("--features", metavar="DATA", help="a bundled data set's classifier (e.g. "
                     "digits/8; trained once and cached): FD, IS, precision, recall, accuracy")
  p.add_argument("--data-dir", help="TFDS data dir (default ~/tensorflow_datasets)")
  p.add_argument("--batch-size", type=positive, default=200, help="images per feature call")
  _cache_flag(p)


def eval_flags(p):
  p.add_argument("--samples", required=True, type=NPZ_FILE,
                 help="uint8 images in arr_0 (labels in `labels`), as `dit-jax sample` writes")
  p.add_argument("--ref", required=True, type=NPZ_FILE,
                 help="`dit-jax eval-ref` output, or an ADM reference batch")
  _feature_flags(p)
  p.add_argument("--format", default="table", choices=("table", "json", "markdown", "csv"))


def eval_ref_flags(p):
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument("--data", help="a TFDS data set (its --split)")
  source.add_argument("--images", type=NPZ_FILE, help="uint8 images in arr_0")
  source.add_argument("--latents", metavar="DIR", type=LATENT_DIR, help="the source "
                      "images (data set, split, size) of a latent folder")
  p.add_argument("--split", default="test")
  p.add_argument("--image-size", type=positive, help="centre crop and resize (as training)")
  p.add_argument("--num", type=positive, help="only the first N images")
  p.add_argument("--out", required=True, type=output_file(".npz"))
  _feature_flags(p)


def eval_loss_flags(p):
  p.add_argument("--workdir", required=True, type=RUN_DIR, help="a training run's directory")
  p.add_argument("--steps", type=step_list, help="checkpoints to evaluate, e.g. 500,1000 "
                 "(default: the newest; train.keep_checkpoints says how many are kept)")
  p.add_argument("--t", type=time_list, help="times, comma-separated (default "
                 "0.05,0.2,0.5,0.8,0.95)")
  p.add_argument("--num", type=positive, default=256, help="held-out examples: the first N of "
                 "--split")
  p.add_argument("--split", default="test")
  p.add_argument("--latents", metavar="DIR", type=LATENT_DIR, help="latent runs: the latents "
                 "of the held-out split (default: the run's data.latents, its training split)")
  p.add_argument("--seed", type=non_negative, default=0, help="of the fixed noise")
  p.add_argument("--batch-size", type=positive, default=256, help="examples per compiled call")
  p.add_argument("--no-raw", action="store_true", help="only the EMA parameters")
  p.add_argument("--format", choices=("table", "json"), default="table")
  p.add_argument("--plot", metavar="FILE.png", type=output_file(".png", ".pdf", ".svg"),
                 help="draw the loss against t, one line per checkpoint")


def train_classifier_flags(p):
  p.add_argument("--data", required=True, help="e.g. digits/8, shapes/single_32")
  p.add_argument("--data-dir", help="TFDS data dir (default ~/tensorflow_datasets)")
  p.add_argument("--steps", type=positive, default=1500)
  p.add_argument("--force", action="store_true", help="train again even when cached")


def convert_flags(p):
  p.add_argument("--from", dest="src", choices=("pytorch",), help="import a facebookresearch/"
                 "DiT state dict (.pt with torch installed, .safetensors or .npz)")
  p.add_argument("--to", dest="dst", choices=("pytorch",), help="export a converted directory "
                 "back to that layout (.safetensors or .npz)")
  p.add_argument("--in", dest="inp", required=True, help="the file (--from) or directory (--to)")
  p.add_argument("--out", required=True, help="the directory (--from) or file (--to)")
  p.add_argument("--model", help="expected preset, e.g. DiT-XL/2 (default: inferred)")
  p.add_argument("--num-heads", type=positive, help="head count of a non-preset size")
