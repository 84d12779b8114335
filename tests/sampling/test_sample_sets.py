"""Sample sets that survive kills, reruns and a training run beside them (`dit-jax sample
--num`): a resumed set is one model and one sampler, a chunk cut short is drawn again, and a
checkpoint deleted by rotation while it is read is not damage."""
import shutil

import numpy as np
import orbax.checkpoint as ocp
import pytest

from dit_jax import cli, paths, state_files
from dit_jax.config import apply_overrides, load_config
from dit_jax.sampling import images
from dit_jax.training import denoiser

TINY = ["train.steps=2", "model.depth=1", "model.hidden_size=16", "model.num_heads=2",
        "train.sample_every=0", "data.batch_size=8", "evals.samples.every=0",
        "train.checkpoint_every=1", "train.keep_checkpoints=2"]
SET = ["--num", "12", "--chunk-size", "4", "--batch-size", "4", "--steps", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny run with checkpoints of steps 1 and 2."""
  workdir = tmp_path_factory.mktemp("sets") / "run"
  denoiser.train(apply_overrides(load_config("configs/quickstart.py"), TINY), str(workdir))
  return workdir


@pytest.fixture
def workdir(trained, tmp_path):
  """A copy of the tiny run that a test may change."""
  return shutil.copytree(trained, tmp_path / "run")


def sample(capsys, workdir, out, *flags):
  """(exit status, stdout, stderr) of `dit-jax sample --workdir workdir --out out SET flags`."""
  try:
    cli.main(["sample", "--workdir", str(workdir), "--out", str(out), *SET, *flags])
    status = 0
  except SystemExit as e:
    status = e.code
  captured = capsys.readouterr()
  return status, captured.out, captured.err


def interrupted(capsys, monkeypatch, workdir, out, *flags):
  """Samples every chunk and stops before the .npz is written, as a kill there would."""
  def killed(*args, **kwargs):
    raise KeyboardInterrupt
  with monkeypatch.context() as m:
    m.setattr(images, "save_npz_chunks", killed)
    assert sample(capsys, workdir, out, *flags)[0] != 0
  out = paths.as_path(out)  # local or gs://
  folder = out.with_name(out.name + ".chunks")
  writer_lock = [] if paths.is_remote(folder) else ["writer.lock"]  # an flock: local only
  assert sorted(paths.list_names(folder)) == [f"chunk-0000{k}.npy" for k in range(3)] + [
      "meta.json"] + writer_lock
  return folder


def test_a_resumed_set_with_other_settings_is_refused(capsys, monkeypatch, workdir, tmp_path):
  out = tmp_path / "s.npz"
  folder = interrupted(capsys, monkeypatch, workdir, out)
  (folder / "chunk-00001.npy").unlink()
  status, _, err = sample(capsys, workdir, out, "--cfg-scale", "0")
  assert status == 2 and "sample.cfg_scale: 2.0 -> 0.0" in err
  assert "Rerun with the recorded settings" in err and f"delete {folder}" in err
  assert "step:" not in err and "model differs" not in err and not out.exists()
  # Training went on between the calls: the chunks are of another model.
  denoiser.train(apply_overrides(load_config("configs/quickstart.py"),
                                 TINY + ["train.steps=3"]), str(workdir))
  status, _, err = sample(capsys, workdir, out)
  assert status == 2 and "step: 2 -> 3" in err and "ema_params_sha256: " in err
  assert "sample.cfg_scale" not in err and "its checkpoint may be gone" in err
  assert not out.exists()


def test_a_resumed_set_with_the_same_settings_is_the_uninterrupted_set(capsys, monkeypatch,
                                                                       workdir, tmp_path):
  whole = tmp_path / "whole.npz"
  assert sample(capsys, workdir, whole)[0] == 0
  out = tmp_path / "s.npz"
  folder = interrupted(capsys, monkeypatch, workdir, out)
  (folder / "chunk-00001.npy").unlink()
  status, line, _ = sample(capsys, workdir, out)
  assert status == 0 and "(4 drawn now, 8 from earlier chunks" in line
  np.testing.assert_array_equal(np.load(out)["arr_0"], np.load(whole)["arr_0"])


@pytest.mark.parametrize("damage", ["truncated", "header", "shape", "image_size"])
def test_a_chunk_that_does_not_load_whole_is_drawn_again(capsys, monkeypatch, workdir, tmp_path,
                                                        damage):
  whole = tmp_path / "whole.npz"
  assert sample(capsys, workdir, whole)[0] == 0
  out = tmp_path / "s.npz"
  chunk = interrupted(capsys, monkeypatch, workdir, out) / "chunk-00000.npy"
  data = chunk.read_bytes()
  if damage == "truncated":
    chunk.write_bytes(data[:len(data) // 2])
  elif damage == "header":
    chunk.write_bytes(b"\0" * len(data))
  elif damage == "shape":
    np.save(chunk, np.load(chunk)[:3])
  else:  # images of another size in the first chunk (was accepted, then every rerun failed)
    np.save(chunk, np.load(chunk)[:, :4])
  status, line, _ = sample(capsys, workdir, out)
  assert status == 0 and f"sample set: {chunk} " in line and "drawing it again" in line
  assert "(4 drawn now, 8 from earlier chunks" in line
  np.testing.assert_array_equal(np.load(out)["arr_0"], np.load(whole)["arr_0"])


def test_chunks_without_their_meta_json_are_not_mixed_in(capsys, monkeypatch, workdir,
                                                        tmp_path):
  """Chunks whose settings are not recorded cannot be checked: refused, not resumed (a rerun
  with --cfg-scale 0 after meta.json was deleted mixed the two samplers, exit 0)."""
  out = tmp_path / "s.npz"
  folder = interrupted(capsys, monkeypatch, workdir, out)
  (folder / "meta.json").unlink()
  status, _, err = sample(capsys, workdir, out, "--cfg-scale", "0")
  assert status == 2 and f"{folder} holds chunks but no meta.json" in err
  assert f"delete {folder}" in err and not out.exists()


def test_a_second_writer_of_the_same_set_is_refused(capsys, workdir, tmp_path):
  """Two `sample --num` on one --out raced: the one finishing first deleted the chunks folder
  under the other (exit 1, a missing temporary file). The second is now refused at once."""
  import fcntl
  import os
  out = tmp_path / "s.npz"
  folder = out.with_name("s.npz.chunks")
  folder.mkdir()
  fd = os.open(folder / "writer.lock", os.O_CREAT | os.O_RDWR)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)  # what the first writer holds while it samples
    status, _, err = sample(capsys, workdir, out)
  finally:
    os.close(fd)
  assert status == 2 and f"another process is writing the sample set {out}" in err
  assert sample(capsys, workdir, out)[0] == 0  # the first one gone: the set is drawn


def test_a_checkpoint_rotated_away_while_it_is_read_is_not_damage(capsys, monkeypatch, workdir,
                                                                  tmp_path):
  """`sample` beside `train` with keep_checkpoints=1: between listing the steps and reading
  the newest, the trainer saves a newer step and deletes the listed one. That step vanished,
  it is not damaged: the newest listed step is read instead."""
  checkpoints = workdir / "checkpoints"
  unsaved = shutil.move(checkpoints / "2", tmp_path / "2")  # listed: step 1 only
  restore = ocp.PyTreeCheckpointer.restore

  def trainer_moves_on(self, path, *args, **kwargs):
    if (checkpoints / "1").exists():  # the trainer saves step 2, then rotates step 1 away
      shutil.move(unsaved, checkpoints / "2")
      shutil.rmtree(checkpoints / "1")
    return restore(self, path, *args, **kwargs)
  monkeypatch.setattr(ocp.PyTreeCheckpointer, "restore", trainer_moves_on)
  out = tmp_path / "grid.png"
  try:
    cli.main(["sample", "--workdir", str(workdir), "--out", str(out), "--per-class", "1",
              "--steps", "1"])
  except SystemExit as e:
    pytest.fail(f"exit {e.code}: {e}")
  printed = capsys.readouterr().out
  assert "checkpoint: step 1 was deleted or superseded while it was read" in printed
  assert f"wrote 10 samples of step 2 to {out}" in printed and "damaged" not in printed


def test_a_checkpoint_that_is_there_and_unreadable_is_still_damage(capsys, workdir, tmp_path):
  for step in (1, 2):  # both steps listed, their data files cut short
    for data in (workdir / "checkpoints" / str(step) / "state" / "d").rglob("*"):
      if data.is_file():
        data.write_bytes(data.read_bytes()[:7])
  with pytest.raises(SystemExit, match="no checkpoint restores") as e:
    cli.main(["sample", "--workdir", str(workdir), "--out", str(tmp_path / "g.png"),
              "--per-class", "1", "--steps", "1"])
  assert e.value.code == 1 and "deleted or superseded" not in capsys.readouterr().out


def test_a_sample_set_in_a_bucket_resumes_to_the_local_set(capsys, monkeypatch, trained,
                                                           tmp_path, gcs_bucket):
  """`--out gs://...`: meta.json and the chunks in the bucket, another setting refused there,
  a lost chunk drawn again, the .npz equal to the local uninterrupted set, the chunks gone;
  nothing in a local `gs:` folder."""
  monkeypatch.chdir(tmp_path)
  whole = tmp_path / "whole.npz"
  assert sample(capsys, trained, whole)[0] == 0
  out = f"{gcs_bucket}/sets/s.npz"
  folder = interrupted(capsys, monkeypatch, trained, out)
  state_files.remove(folder / "chunk-00001.npy")
  status, _, err = sample(capsys, trained, out, "--cfg-scale", "0")
  assert status == 2 and "sample.cfg_scale: 2.0 -> 0.0" in err and f"delete {folder}" in err
  status, line, _ = sample(capsys, trained, out)
  assert status == 0 and "(4 drawn now, 8 from earlier chunks" in line
  with paths.open_read(out) as f, np.load(f) as remote, np.load(whole) as local:
    for key in ("arr_0", "labels"):
      np.testing.assert_array_equal(remote[key], local[key])
  assert paths.list_names(folder) == [] and paths.list_names(f"{gcs_bucket}/sets") == ["s.npz"]
  assert list(tmp_path.iterdir()) == [whole]
