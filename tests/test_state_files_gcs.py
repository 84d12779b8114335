"""dit_jax.state_files and dit_jax.paths in a bucket (gs://, against the emulator of
tests/gcs_emulator.py): objects published whole, damage named, one winner of a create race,
no history lost by an append, clear errors for a missing extra, bucket or credential."""
import importlib.util
import json
import os
from concurrent.futures import ThreadPoolExecutor

import fsspec
import pytest

import gcs_emulator
from dit_jax import paths, state_files
from dit_jax.errors import InputError, MissingFileError, MissingPackageError


def bucket_object(url: str) -> bytes:
  """The object's bytes as the bucket holds them (not through the code under test)."""
  return fsspec.filesystem("gcs").cat_file(paths.object_name(url))


def test_json_round_trip_lands_in_the_bucket_not_a_local_gs_folder(gcs_bucket, tmp_path,
                                                                   monkeypatch):
  monkeypatch.chdir(tmp_path)
  url = f"{gcs_bucket}/run/config.json"
  state_files.write_json(url, {"steps": 8}, indent=1)
  state_files.write_json(url, {"steps": 16})  # replaced whole
  assert json.loads(bucket_object(url)) == {"steps": 16}
  assert state_files.read_json(url) == {"steps": 16}
  assert list(tmp_path.iterdir()) == []  # pathlib would have made ./gs:/BUCKET/run here


def test_a_damaged_object_is_named_with_the_fix(gcs_bucket):
  url = f"{gcs_bucket}/run/config.json"
  fsspec.filesystem("gcs").pipe_file(paths.object_name(url), b'{"model": {"na')
  with pytest.raises(InputError, match=rf"{url} \(the config\) is damaged .*restore it"):
    state_files.read_json(url, "the config")
  with pytest.raises(FileNotFoundError):  # absence stays absence: callers decide
    state_files.read_json(f"{gcs_bucket}/run/missing.json")


def test_only_one_of_racing_creators_wins(gcs_bucket):
  """Eight threads create each of ten objects at once (ifGenerationMatch=0): one wins each,
  and the object holds the winner's content."""
  for trial in range(10):
    url = f"{gcs_bucket}/run/lock-{trial}"
    with ThreadPoolExecutor(8) as pool:
      won = list(pool.map(lambda i, url=url: state_files.create_exclusive(url, f"{i}"),
                          range(8)))
    assert sum(won) == 1
    assert bucket_object(url) == str(won.index(True)).encode()


def test_appends_keep_the_history_and_versions_change_on_replace(gcs_bucket):
  url = f"{gcs_bucket}/run/metrics.jsonl"
  state_files.append_json_lines(url, [{"step": 1}])
  state_files.append_json_lines(url, [{"step": 2}, {"step": 3}])  # gcsfs "a" would replace
  assert bucket_object(url) == b'{"step": 1}\n{"step": 2}\n{"step": 3}\n'
  assert state_files.read_json_lines(url) == [{"step": 1}, {"step": 2}, {"step": 3}]
  text, first = state_files.read_versioned(url)
  state_files.rewrite_json_lines(url, [{"step": 1}])
  assert state_files.version(url) not in (first, None) and text.count(b"\n") == 3
  state_files.remove(url)
  assert state_files.version(url) is None and state_files.read_json_lines(url) == []


def test_a_bucket_path_without_the_extra_or_with_a_lost_slash_is_a_clear_error(monkeypatch):
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "gcsfs" else find_spec(name, *a))
  with pytest.raises(MissingPackageError, match=r"gs://b/run/x.json is in a bucket.*"
                                                r"pip install 'dit-jax\[gcs\]'"):
    state_files.write_json("gs://b/run/x.json", {})
  with pytest.raises(InputError, match="gs:/b/run looks like a bucket path that lost a slash"
                                       ".*write gs://b/run"):
    paths.as_path("gs:/b/run")


def test_an_unknown_bucket_and_a_missing_credential_name_the_path(gcs_server, monkeypatch):
  url = "gs://no-such-bucket-here/run/config.json"
  with pytest.raises(MissingFileError, match=f"{url}: the bucket gs://no-such-bucket-here "
                                             "or the object does not exist"):
    state_files.write_json(url, {})
  # No application default credentials: a key file that is not there.
  monkeypatch.setitem(fsspec.config.conf, "gcs", {"token": "google_default"})
  monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/key.json")
  gcs_emulator.clear_client_caches()
  try:
    with pytest.raises(InputError, match=f"{gcs_server.create_bucket('creds')}/x.json: the "
                                         "bucket refused access .*application-default login"):
      state_files.write_json("gs://creds/x.json", {})
  finally:
    monkeypatch.undo()
    gcs_emulator.clear_client_caches()
  assert os.environ["FSSPEC_GCS_TOKEN"] == "anon"
