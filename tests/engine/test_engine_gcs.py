"""The engine's checkpoint fallback with the workdir in a bucket (the emulator of
tests/gcs_emulator.py): a damaged newest step cannot be renamed aside there, so it is copied
to checkpoints-damaged/ whole and then deleted; the run falls back and ends bit-identical."""
import tempfile

import jax
import jax.numpy as jnp

from dit_jax import paths
from test_engine import assert_same, full_state, run, steps_on_disk, toy_config


def test_a_damaged_step_in_a_bucket_is_copied_aside_and_the_run_resumes_exactly(
    gcs_bucket, tmp_path, capsys):
  config = toy_config(steps=6)
  straight = run(config, tmp_path / "straight")
  workdir = paths.as_path(f"{gcs_bucket}/run")
  run(toy_config(steps=4), workdir)
  run(config, workdir)  # steps 2, 4, 6 in the bucket
  step_6 = workdir / "checkpoints" / "6"
  fs = paths.filesystem(step_6)
  before = sorted(p[len(paths.object_name(step_6)):] for p in fs.find(paths.object_name(step_6)))
  (step_6 / "state" / "manifest.ocdbt").unlink()  # damage: Orbax cannot read the step
  capsys.readouterr()
  run(config, workdir)
  out = capsys.readouterr().out
  assert "restored step 4, skipped damaged step 6" in out
  assert f"moved to {workdir}/checkpoints-damaged" in out
  [moved] = paths.list_names(workdir / "checkpoints-damaged")
  assert moved.startswith("6-")
  aside = workdir / "checkpoints-damaged" / moved
  assert sorted(p[len(paths.object_name(aside)):] for p in fs.find(paths.object_name(aside))) \
      == [name for name in before if name != "/state/manifest.ocdbt"]  # every object kept
  assert steps_on_disk(workdir) == [2, 4, 6]  # step 6 trained again
  assert_same(jax.device_get(straight), full_state(workdir, config))


def test_a_profile_of_a_run_in_a_bucket_lands_in_the_bucket(gcs_bucket, tmp_path,
                                                          monkeypatch):
  """The profiler writes local files only: a run in a bucket traces into a temporary folder
  and uploads it to WORKDIR/profile when the trace stops; nothing local is left."""
  from dit_jax.engine.loop import Profile
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
  (tmp_path / "tmp").mkdir()
  tempfile.tempdir = None  # read TMPDIR again
  try:
    profile = Profile(f"{gcs_bucket}/run", start=0, steps=1)
    profile.before(0)
    x = jax.jit(lambda a: a @ a)(jnp.ones((8, 8)))
    profile.after(1, x)
  finally:
    tempfile.tempdir = None
  traces = [p for p in paths.filesystem(gcs_bucket).find(
      paths.object_name(f"{gcs_bucket}/run/profile")) if p.endswith(".xplane.pb")]
  assert len(traces) == 1
  assert list((tmp_path / "tmp").iterdir()) == []  # the local copy is gone
  assert [p.name for p in tmp_path.iterdir()] == ["tmp"]  # no local gs: folder
