"""Every bad input to `dit-jax` ends in one clear paragraph and an exit status, never a traceback.

The matrix runs `cli.main` in-process; every case fails before any training or sampling starts.
"""
import errno
import os
import re
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dit_jax import cli
from dit_jax.config import ConfigError
from dit_jax.convert.io import load_tensors
from dit_jax.engine import DivergenceError, Preempted
from dit_jax.engine.workdir_lock import WorkdirLockedError
from dit_jax.errors import InputError, MissingFileError, MissingPackageError, RunFailedError
from dit_jax.sampling import images

TINY_RUN = ["--config.train.steps=2", "--config.model.depth=1", "--config.model.hidden_size=16",
            "--config.model.num_heads=2", "--config.train.sample_every=0",
            "--config.data.batch_size=8", "--config.evals.samples.every=0"]


class _Pickled:
  """Unpickling this runs code (touches `marker`): a loader that unpickles would leave it."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (Path.touch, (Path(self.marker),))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """A folder of bad inputs: damaged, empty and misnamed files, a folder named like a file."""
  tmp = tmp_path_factory.mktemp("bad_inputs")
  (tmp / "garbage.safetensors").write_bytes(b"not a safetensors file" * 4)
  (tmp / "empty.safetensors").write_bytes(b"")
  (tmp / "empty.npz").write_bytes(b"")
  (tmp / "text.npz").write_text("these are not arrays\n")
  np.savez(tmp / "object.npz", w=np.ones(2, np.float32),
           o=np.array([_Pickled(tmp / "unpickled")], dtype=object))
  np.savez(tmp / "not_dit.npz", w=np.ones(3, np.float32))
  with zipfile.ZipFile(tmp / "not_npy.npz", "w") as archive:
    archive.writestr("readme.txt", "hello")
  (tmp / "weights.h5").write_bytes(b"\x89HDF")
  (tmp / "a_file.txt").write_text("a file, not a folder\n")
  (tmp / "emptydir").mkdir()
  (tmp / "folder.png").mkdir()
  (tmp / "dangling").symlink_to(tmp / "nowhere")
  (tmp / "bad_converted").mkdir()
  (tmp / "bad_converted" / "params.npz").write_text("these are not arrays\n")
  (tmp / "bad_converted" / "dit.json").write_text("{}\n")
  return tmp


@pytest.fixture
def run(tmp_path):
  """A tiny trained quickstart run (about 10 s on 2 CPU cores)."""
  workdir = tmp_path / "run"
  cli.main(["train", "--config", "configs/quickstart.py", "--workdir", str(workdir), *TINY_RUN])
  return workdir




def _fails_cleanly(capsys, command, argv, status, needle):
  """`dit-jax command argv` exits with `status` and one paragraph on stderr matching `needle`."""
  with pytest.raises(SystemExit) as exit_info:
    cli.main(([command] if command else []) + argv)
  out, err = capsys.readouterr()
  prefix = f"dit-jax {command}:" if command else "dit-jax:"
  assert exit_info.value.code == status, err
  assert "Traceback" not in out + err
  message = err[err.rindex(prefix):]  # argparse prints its usage lines first
  assert re.search(needle, message), message
  assert "\n\n" not in message.strip() and message.endswith("\n"), message
  return message


# Each case: command, arguments ({tmp}: the `files` folder), a regex the message must match.
# A flag given twice takes its last value, so a case may override one of the base arguments.
TRAIN = ["--config", "configs/quickstart.py", "--workdir", "{tmp}/w"]
VAE = ["--config", "configs/vae.py", "--workdir", "{tmp}/w"]
SAMPLE = ["--workdir", "{tmp}/emptydir", "--out", "{tmp}/s.png"]
CONVERTED = ["--converted", "{tmp}/emptydir", "--out", "{tmp}/s.npz"]
IMPORT = ["--from", "pytorch", "--out", "{tmp}/c", "--in"]
LATENTS = ["--config", "configs/latent_quickstart.py", "--vae", "{tmp}/emptydir", "--out",
           "{tmp}/lat"]
B4 = ["--config", "configs/dit.py:DiT-B/4"]
CASES = [
    ("train", ["--config", "{tmp}/nosuch.py", "--workdir", "{tmp}/w"], "config file .*nosuch.py"),
    ("train", ["--config", "configs/quickstart.py"], "required: --workdir"),
    ("train", TRAIN + ["--config.nosuch.field=1"], "config.nosuch.field.*no section 'nosuch'"),
    ("train", TRAIN + ["--config.model.nosuch=1"], "config.model.nosuch.*no field 'nosuch'"),
    ("train", TRAIN + ["--config.train.steps=abc"], "config.train.steps='abc'"),
    ("train", TRAIN + ["--config.optim.lr="], "config.optim.lr=''"),
    ("train", TRAIN + ["--config.model.depth"], "'model.depth' must look like --config.section"),
    ("train", TRAIN + ["--workdir", "{tmp}/a_file.txt"], "--workdir: .*a_file.txt is a file"),
    ("train", TRAIN + ["--workdir", "{tmp}/dangling"],
     "--workdir: .*dangling is a dangling symbolic link .*nowhere, which does not exist"),
    ("train", TRAIN + ["--num-processes", "0"], "--num-processes: must be >= 1"),
    ("train", TRAIN + ["--process-id", "-1"], "--process-id: must be >= 0"),

    ("sample", SAMPLE + ["--per-class", "0"], "--per-class: must be >= 1, got 0"),
    ("sample", SAMPLE + ["--per-class=-3"], "--per-class: must be >= 1, got -3"),
    ("sample", SAMPLE + ["--per-class", "many"], "--per-class: expected a whole number"),
    ("sample", SAMPLE + ["--batch-size", "0"], "--batch-size: must be >= 1"),
    ("sample", SAMPLE + ["--steps", "0"], "--steps: must be >= 1"),
    ("sample", SAMPLE + ["--workdir", "{tmp}/a_file.txt"],
     "--workdir: .*a_file.txt is a file, not a directory: pass the directory of a `dit-jax "
     "train` run"),
    ("sample", SAMPLE + ["--workdir", "{tmp}/missing"],
     "--workdir: .*missing does not exist: pass the directory of a `dit-jax train` run"),
    ("sample", SAMPLE, "config.json not found: --workdir must be a directory written by"),
    ("sample", SAMPLE + ["--labels", "3,x"],
     "--labels: expected class labels >= 0 separated by commas.*'3,x'"),
    ("sample", SAMPLE + ["--labels=-1"], "--labels: expected class labels >= 0"),
    ("sample", SAMPLE + ["--out", "{tmp}/s.jpg"],
     "--out: .*s.jpg' has no known extension: name the file FILE.png or FILE.npz"),
    ("sample", SAMPLE + ["--out", "{tmp}/a_file.txt/s.png"],
     "--out: .*a_file.txt is a file, so nothing can be written under it"),
    ("sample", SAMPLE + ["--out", "{tmp}/folder.png"],
     "--out: .*folder.png is a directory: name a file in it"),
    ("sample", SAMPLE + ["--cfg-scale", "nan"], "--cfg-scale: expected a finite number"),
    ("sample", SAMPLE + ["--method", "rk4"], "--method: invalid choice: 'rk4'"),
    ("sample", ["--workdir", "{tmp}/emptydir"], "required: --out"),
    ("sample", SAMPLE + ["--converted", "{tmp}/emptydir"],
     "--converted: not allowed with argument --workdir"),
    ("sample", SAMPLE + ["--per-class", "2", "--labels", "1"],
     "--labels: not allowed with argument --per-class"),
    ("sample", SAMPLE + ["--vae", "{tmp}/missing"],
     "--vae: .*missing does not exist: pass a VAE folder"),
    ("sample", CONVERTED + ["--converted", "{tmp}/missing"],
     "--converted: .*missing does not exist: pass a directory written by `dit-jax convert"),
    ("sample", CONVERTED, "emptydir.* not found: make the directory with `dit-jax convert"),
    ("sample", CONVERTED + ["--guide-channels", "0"], "--guide-channels: must be >= 1"),
    ("sample", CONVERTED + ["--converted", "{tmp}/bad_converted"],
     r"bad_converted/params.npz is not an .npz file"),

    ("convert", IMPORT + ["{tmp}/garbage.safetensors"],
     "garbage.safetensors is not a readable .safetensors file"),
    ("convert", IMPORT + ["{tmp}/empty.safetensors"], "empty.safetensors is empty"),
    ("convert", IMPORT + ["{tmp}/empty.npz"], "empty.npz is empty"),
    ("convert", IMPORT + ["{tmp}/text.npz"],
     r"text.npz is not an .npz file \(a zip archive of .npy arrays"),
    ("convert", IMPORT + ["{tmp}/not_npy.npz"],
     "not_npy.npz: member 'readme.txt' is not a .npy array"),
    ("convert", IMPORT + ["{tmp}/object.npz"],
     r"object.npz: array 'o' holds Python objects \(dtype object\), which dit-jax never loads"),
    ("convert", IMPORT + ["{tmp}/missing.npz"], "weight file .*missing.npz not found"),
    ("convert", IMPORT + ["{tmp}/weights.h5"], "weights.h5: unknown weight format '.h5'"),
    ("convert", IMPORT + ["{tmp}/emptydir"], "emptydir is a directory: pass the file itself"),
    ("convert", IMPORT + ["{tmp}/not_dit.npz"],
     "checkpoint has no 'x_embedder.proj.weight': not a facebookresearch/DiT state dict"),
    ("convert", ["--in", "{tmp}/not_dit.npz", "--out", "{tmp}/c"],
     "pass exactly one of --from pytorch"),
    ("convert", ["--to", "pytorch", "--in", "{tmp}/emptydir", "--out", "{tmp}/c.npz"],
     "not found: make the directory with"),
    ("convert", IMPORT + ["{tmp}/not_dit.npz", "--from", "tensorflow"],
     "--from: invalid choice: 'tensorflow'"),
    ("convert", IMPORT + ["{tmp}/not_dit.npz", "--num-heads", "0"], "--num-heads: must be >= 1"),

    ("eval-loss", ["--workdir", "{tmp}/emptydir"],
     "config.json not found: --workdir must be a directory written by"),
    ("eval-loss", ["--workdir", "{tmp}/missing"], "--workdir: .*missing does not exist"),
    ("eval-loss", ["--workdir", "{tmp}/emptydir", "--t", "0.5,2"],
     r"--t: '0.5,2': expected times in \[0, 1\] \(0 noise, 1 data\)"),
    ("eval-loss", ["--workdir", "{tmp}/emptydir", "--steps", "500,x"],
     "--steps: '500,x': expected checkpoint steps such as 1000"),
    ("eval-loss", ["--workdir", "{tmp}/emptydir", "--plot", "{tmp}/p.jpg"],
     "--plot: .*p.jpg' has no known extension"),

    ("train-vae", VAE + ["--config", "{tmp}/nosuch.py"], "config file .*nosuch.py"),
    ("train-vae", VAE + ["--workdir", "{tmp}/a_file.txt"], "--workdir: .*a_file.txt is a file"),
    ("train-vae", VAE + ["--config.vae.nosuch=1"], "config.vae.nosuch: config has no field"),
    ("train-vae", VAE + ["--config.nosuch.field=1"], "no section 'nosuch'"),
    ("train-vae", VAE + ["--config", "configs/vae.py:nosuch"], "vae preset 'nosuch' is not one"),

    ("extract-latents", LATENTS + ["--batch-size", "0"], "--batch-size: must be >= 1"),
    ("extract-latents", LATENTS + ["--chunk-size", "0"], "--chunk-size: must be >= 1"),
    ("extract-latents", LATENTS + ["--chunk-size", "100"],
     "--chunk-size 100 must be a multiple of --batch-size 64"),
    ("extract-latents", LATENTS + ["--vae", "{tmp}/missing"],
     "--vae: .*missing does not exist: pass a VAE"),
    ("extract-latents", LATENTS, "--vae .*emptydir: no VAE there"),
    ("extract-latents", LATENTS + ["--out", "{tmp}/a_file.txt"], "--out: .*a_file.txt is a file"),
    ("extract-latents", LATENTS + ["--max-chunks", "0"], "--max-chunks: must be >= 1"),
    ("extract-latents", LATENTS + ["--dtype", "float64"], "--dtype: invalid choice"),
    ("extract-latents", LATENTS + ["--config", "{tmp}/nosuch.py"], "config file .*nosuch.py"),

    ("flops", ["--models", "Q/2"], "unknown DiT model name 'DiT-Q/2'"),
    ("flops", ["--image-size", "0"], "--image-size: must be >= 1"),
    ("flops", ["--image-size", "250"], "--image-size 250 is not divisible by --latent-downsample"),
    ("flops", ["--format", "xml"], "--format: invalid choice: 'xml'"),
    ("flops", ["--num-classes", "-1"], "--num-classes: must be >= 0"),
    ("flops", ["--config.model.depth=2"], "overrides need --config"),
    ("flops", B4 + ["--config.model.nosuch=1"], "config.model.nosuch: config has no field"),
    ("flops", B4 + ["--config.nosuch.field=1"], "no section 'nosuch'"),
    ("flops", ["--config", "configs/nosuch.py"], "config file 'configs/nosuch.py' not found"),
    ("flops", ["--config", "configs/dit.py:DiT-Q/2"], "unknown DiT model name 'DiT-Q/2'"),
    ("flops", ["--plot", "{tmp}/flops.gif"], "--plot: .*flops.gif' has no known extension"),

    ("bench", ["--batch-size", "0"], "--batch-size: must be >= 1"),
    ("bench", ["--steps", "0"], "--steps: must be >= 1"),
    ("bench", ["--dtype", "int8"], "--dtype: invalid choice: 'int8'"),
    ("bench", ["--attention", "flash9"], "--attention: invalid choice: 'flash9'"),
    ("bench", ["--remat", "most"], "--remat: invalid choice: 'most'"),
    ("bench", ["--model", "S/2", "--mesh", "fsdp"], "--mesh 'fsdp': expected key=value items"),
    ("bench", ["--model", "S/2", "--mesh", "data=x"], "--mesh 'data=x': .*whole-number sizes"),
    ("bench", ["--model", "Q/2"], "unknown DiT model name 'DiT-Q/2'"),
    ("bench", ["--config.model.depth=2"], r"--config\.\* overrides need --config"),
    ("bench", ["--sample", "rk4:10"], "--sample: expected METHOD:STEPS with METHOD one of"),
    ("bench", ["--sample", "ddpm:0"], "--sample: expected METHOD:STEPS .* got 'ddpm:0'"),

    ("", [], "required: command"),
    ("", ["fly"], "invalid choice: 'fly'"),
]

# Values that parse but make no sense: config.py's schema (ConfigError, a ValueError) rejects
# them before training starts.
CONFIG_VALUE_CASES = [
    ("data.batch_size=6.5", "data.batch_size"),
    ("optim.lr=nan", "optim.lr"),
    ("optim.lr=-1.0", "optim.lr"),
    ("model.depth=0", "model.depth"),
    ("model.hidden_size=15", "model.hidden_size"),
    ("model.num_classes=-1", "model.num_classes"),
    ("train.ema_decay=1.5", "train.ema_decay"),
    ("train.steps=-1", "train.steps"),
    ("optim.warmup_steps=-5", "optim.warmup_steps"),
    ("sample.steps=0", "sample.steps"),
    ("model.depth=[1]", "model.depth"),  # a list for an int: a TypeError in apply_overrides
    ("data.batch_size=abc", "data.batch_size"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints"),  # used to delete every checkpoint
    ("train.ema_decay=-0.1", "train.ema_decay"),
    ("sample.cfg_scale=-1.0", "sample.cfg_scale"),
    ("train.spike_factor=0.5", "train.spike_factor"),
    ("objective.kind=score", "objective.kind"),
]


@pytest.mark.parametrize("command,argv,needle", CASES,
                         ids=[f"{c or 'main'}-{i}" for i, (c, _, _) in enumerate(CASES)])
def test_bad_input_gives_one_clear_message(capsys, files, command, argv, needle):
  argv = [a.format(tmp=files) for a in argv]
  _fails_cleanly(capsys, command, argv, cli.STATUS_BAD_INPUT, needle)


@pytest.mark.parametrize("override,field", CONFIG_VALUE_CASES)
def test_bad_config_value_names_the_field(capsys, monkeypatch, tmp_path, override, field):
  def training_starts(*args, **kwargs):  # a value not refused by then fails this test, cheaply
    raise RuntimeError(f"--config.{override} was not refused before training")
  monkeypatch.setattr("dit_jax.data.make_iterator", training_starts)
  argv = ["--config", "configs/quickstart.py", "--workdir", str(tmp_path), *TINY_RUN,
          f"--config.{override}"]
  _fails_cleanly(capsys, "train", argv, cli.STATUS_BAD_INPUT, re.escape(field))


def test_config_file_that_is_not_python_is_named(capsys, files):
  _fails_cleanly(capsys, "flops", ["--config", str(files / "a_file.txt")], cli.STATUS_BAD_INPUT,
                 "--config .*a_file.txt")


def test_object_npz_is_refused_without_unpickling(files):
  with pytest.raises(ValueError, match="holds Python objects") as error:
    load_tensors(files / "object.npz")
  assert "allow_pickle" not in str(error.value)
  assert not (files / "unpickled").exists()  # the pickled object's code never ran


def test_good_npz_and_safetensors_still_load(tmp_path):
  from safetensors.numpy import save_file
  arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], np.int8)}
  np.savez(tmp_path / "w.npz", **arrays)
  save_file(arrays, str(tmp_path / "w.safetensors"))
  for name in ("w.npz", "w.safetensors"):
    loaded = load_tensors(tmp_path / name)
    assert set(loaded) == set(arrays)
    for key, value in arrays.items():
      np.testing.assert_array_equal(loaded[key], value)
      assert loaded[key].dtype == value.dtype


@pytest.mark.parametrize("error,status,message", [
    (DivergenceError("loss is nan at step 7"), cli.STATUS_FAILED, "loss is nan at step 7"),
    (RunFailedError("2 runs failed"), cli.STATUS_FAILED, "2 runs failed"),
    (OSError(errno.ENOSPC, "No space left on device", "runs/x"), cli.STATUS_FAILED,
     "runs/x: No space left on device"),
    (PermissionError(errno.EACCES, "Permission denied", "ckpt"), cli.STATUS_FAILED,
     "ckpt: Permission denied"),
    (KeyboardInterrupt(), cli.STATUS_INTERRUPTED, "interrupted"),
    (Preempted(12, signal.SIGTERM), 128 + signal.SIGTERM,
     "SIGTERM: saved step 12 and stopped; rerun the same command to resume"),
    (InputError("model"), cli.STATUS_BAD_INPUT, "model"),
    (MissingFileError("ckpt/params.npz not found"), cli.STATUS_BAD_INPUT,
     "ckpt/params.npz not found"),
    (WorkdirLockedError("runs/x is in use"), cli.STATUS_BAD_INPUT, "runs/x is in use"),
    (MissingPackageError("reading x.pt needs PyTorch"), cli.STATUS_BAD_INPUT,
     "reading x.pt needs PyTorch"),
    (ConfigError("first line\n\n  second line\n"), cli.STATUS_BAD_INPUT,
     "first line\n  second line"),
])
def test_expected_errors_map_to_documented_statuses(capsys, monkeypatch, error, status, message):
  def fails(args, overrides):
    raise error
  monkeypatch.setattr(cli, "cmd_flops", fails)
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["flops"])
  assert exit_info.value.code == status
  assert capsys.readouterr().err == f"dit-jax flops: {message}\n"
  assert str(exit_info.value) == f"dit-jax flops: {message}"
  documented = "128 + signal" if status > 130 else status
  assert re.search(rf"^ +{re.escape(str(documented))} +\S", cli.__doc__, re.M)  # documented


def test_debug_flag_reraises_anywhere_on_the_line(files):
  for argv in (["--debug", "convert"], ["convert", "--debug"]):
    with pytest.raises(ValueError, match="empty.npz is empty"):
      cli.main(argv + ["--from", "pytorch", "--in", str(files / "empty.npz"), "--out",
                       str(files / "c")])


# Not the library's own errors: raised by a bug (or a third-party error nobody wrapped).
BUGS = [IndexError("list index out of range"), KeyError("model"), TypeError("got 2 arguments"),
        ValueError("a plain ValueError"), EOFError("No data left in file"),
        zipfile.BadZipFile("File is not a zip file"), NotImplementedError(),
        ImportError("cannot import name 'x'"), FloatingPointError("nan")]


@pytest.mark.parametrize("error", BUGS, ids=[type(e).__name__ for e in BUGS])
def test_a_bug_keeps_its_traceback(capsys, monkeypatch, error):
  def buggy(args, overrides):
    raise error
  monkeypatch.setattr(cli, "cmd_flops", buggy)
  with pytest.raises(type(error)) as raised:
    cli.main(["flops"])
  assert raised.value is error
  assert any("likely a bug in dit-jax" in note for note in error.__notes__)
  assert "dit-jax flops:" not in capsys.readouterr().err  # no one-line message: the traceback


def test_an_internal_key_error_in_a_library_function_shows_its_traceback(monkeypatch):
  """A KeyError inside the library (here in the flops rows `flops` calls) is a bug: the CLI
  lets it propagate (its traceback, exit status 1), not the exit 2 of bad input."""
  from dit_jax.studies import reports

  def buggy_row(*args, **kwargs):
    return {}["gflops"]
  monkeypatch.setattr(reports, "flops_row", buggy_row)
  with pytest.raises(KeyError) as raised:
    cli.main(["flops", "--models", "S/8"])
  assert any("likely a bug" in note for note in raised.value.__notes__)
  assert raised.traceback[-1].name == "buggy_row"  # the traceback reaches the library function
  argv = [sys.executable, "-m", "dit_jax.cli", "flops", "--models", "S/8", "--image-size", "250"]
  env = dict(os.environ, PYTHONPATH=str(Path(cli.__file__).parents[1]), JAX_PLATFORMS="cpu")
  code = ("import sys; from dit_jax.studies import reports; "
          "reports.model_names = lambda spec: {}['no such key']; "
          "from dit_jax import cli; cli.main(sys.argv[1:])")
  buggy = subprocess.run([sys.executable, "-c", code, "flops", "--models", "S/8"],
                         capture_output=True, text=True, env=env)
  assert buggy.returncode == 1 and "Traceback" in buggy.stderr
  assert "KeyError: 'no such key'" in buggy.stderr and "likely a bug" in buggy.stderr
  clean = subprocess.run(argv, capture_output=True, text=True, env=env)  # an InputError
  assert clean.returncode == 2 and "Traceback" not in clean.stderr
  assert clean.stderr.strip().splitlines()[-1] == ("dit-jax flops: --image-size 250 is not "
                                                   "divisible by --latent-downsample 8")


def test_a_library_input_error_exits_2_without_traceback(capsys, monkeypatch):
  from dit_jax.studies import reports

  def refuses(*args, **kwargs):
    raise InputError("--models: DiT-Q/2 is not a preset; use one of DiT-XL/2, ...")
  monkeypatch.setattr(reports, "flops_row", refuses)
  _fails_cleanly(capsys, "flops", ["--models", "S/8"], cli.STATUS_BAD_INPUT,
                 "DiT-Q/2 is not a preset")


def test_console_exit_status(files):
  argv = [sys.executable, "-m", "dit_jax.cli", "convert", "--from", "pytorch", "--in",
          str(files / "text.npz"), "--out", str(files / "c")]
  env = dict(os.environ, PYTHONPATH=str(Path(cli.__file__).parents[1]), JAX_PLATFORMS="cpu")
  plain = subprocess.run(argv, capture_output=True, text=True, env=env)
  assert plain.returncode == 2 and "Traceback" not in plain.stderr
  assert plain.stderr.strip().splitlines()[-1] == (f"dit-jax convert: {files / 'text.npz'} is "
                                                   "not an .npz file (a zip archive of .npy "
                                                   "arrays, as np.savez writes): it is damaged "
                                                   "or of another format")


def test_npz_writer_streams_each_chunk_as_it_comes(tmp_path):
  """The writer gets one reused buffer per chunk: had it kept the chunks and joined them at
  the end, every image would hold the last chunk's value."""
  buffer = np.zeros((4, 3, 5, 2), np.uint8)
  sizes = [4, 4, 4, 1]

  def chunks():
    for k, n in enumerate(sizes):
      buffer[:] = k + 1
      yield buffer[:n]
  labels = np.arange(sum(sizes)) % 10
  images.save_npz_chunks(chunks(), labels, tmp_path / "out" / "s.npz")
  saved = np.load(tmp_path / "out" / "s.npz", allow_pickle=False)
  expected = np.concatenate([np.full((n, 3, 5, 2), k + 1, np.uint8) for k, n in enumerate(sizes)])
  np.testing.assert_array_equal(saved["arr_0"], expected)
  np.testing.assert_array_equal(saved["labels"], labels)
  assert sorted(saved.files) == ["arr_0", "labels"]
  assert os.listdir(tmp_path / "out") == ["s.npz"]  # the temporary file is gone


@pytest.mark.parametrize("sizes,message", [([4, 4], "chunks held 8 images, the labels 9"),
                                           ([4, 4, 4], "more than the 9 images")])
def test_npz_writer_refuses_a_count_mismatch_and_leaves_no_file(tmp_path, sizes, message):
  chunks = (np.zeros((n, 2, 2, 1), np.uint8) for n in sizes)
  with pytest.raises(ValueError, match=message):
    images.save_npz_chunks(chunks, np.zeros(9), tmp_path / "s.npz")
  assert os.listdir(tmp_path) == []


def test_sample_streams_batches_into_the_npz_with_a_progress_bar(capsys, monkeypatch, run,
                                                                 tmp_path):
  """Also the one bad-input case that needs a trained model (the only user of `run`, so one
  pytest-xdist worker trains it)."""
  _fails_cleanly(capsys, "sample", ["--workdir", str(run), "--out", str(tmp_path / "s.png"),
                                    "--labels", "3,11"], cli.STATUS_BAD_INPUT,
                 r"--labels 3,11: this model has 10 classes, so labels lie in 0\.\.10")
  seen = []

  def recording_writer(chunks, labels, path):
    def record():
      for chunk in chunks:
        seen.append(len(chunk))
        yield chunk
    assert not isinstance(chunks, (list, tuple, np.ndarray))  # an iterator, sampled lazily
    real_writer(record(), labels, path)
  real_writer = images.save_npz_chunks
  monkeypatch.setattr(images, "save_npz_chunks", recording_writer)
  out = tmp_path / "new" / "s.npz"
  cli.main(["sample", "--workdir", str(run), "--per-class", "3", "--batch-size", "16",
            "--steps", "1", "--out", str(out)])
  captured = capsys.readouterr()
  assert seen == [16, 14]
  saved = np.load(out)
  assert saved["arr_0"].shape == (30, 8, 8, 1) and saved["arr_0"].dtype == np.uint8
  np.testing.assert_array_equal(saved["labels"], np.repeat(np.arange(10), 3))
  assert "30/30" in captured.err and "wrote 30 samples" in captured.out
  # A sample set: uniform labels, data parallel over the 8 devices, in chunks of 8 (resumable).
  monkeypatch.setattr(images, "save_npz_chunks", real_writer)
  cli.main(["sample", "--workdir", str(run), "--num", "20", "--chunk-size", "8",
            "--batch-size", "8", "--steps", "1", "--out", str(tmp_path / "set.npz")])
  assert "wrote 20 samples of step 2" in capsys.readouterr().out
  saved = np.load(tmp_path / "set.npz")
  assert saved["arr_0"].shape == (20, 8, 8, 1) and len(set(saved["labels"])) > 3
  assert 0 <= saved["labels"].min() and saved["labels"].max() <= 9
  assert not (tmp_path / "set.npz.chunks").exists()
