"""dit_jax.state_files: atomic publication and honest reads of JSON / JSON-lines state files."""
import json
import os

import pytest

from dit_jax import state_files
from dit_jax.errors import InputError


def test_a_failed_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
  path = tmp_path / "result.json"
  state_files.write_json(path, {"steps": 8})

  def crash(src, dst):  # the disk fills, or the process dies, before the rename
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(os, "replace", crash)
  with pytest.raises(OSError, match="No space"):
    state_files.write_json(path, {"steps": 16})
  assert json.loads(path.read_text()) == {"steps": 8}
  assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]  # no temporary left


def test_write_then_read(tmp_path):
  path = tmp_path / "sub" / "meta.json"
  state_files.write_json(path, {"a": [1, 2]}, indent=1)
  assert state_files.read_json(path) == {"a": [1, 2]} and path.read_text().endswith("}\n")


def test_a_damaged_json_file_is_named_with_the_fix(tmp_path):
  path = tmp_path / "result.json"
  path.write_text('{"steps": 8, "fd')
  with pytest.raises(InputError, match=rf"{path} \(a sweep result\) is damaged .*Unterminated"
                                       r".*restore it from a backup, or delete it"):
    state_files.read_json(path, "a sweep result")
  path.write_bytes(b"\xff\xfe\x00garbage")
  with pytest.raises(InputError, match="is damaged"):
    state_files.read_json(path)


def test_a_partial_last_line_is_dropped_with_a_warning(tmp_path):
  path = tmp_path / "metrics.jsonl"
  state_files.append_json_lines(path, [{"step": 1}, {"step": 2}])
  with open(path, "a") as f:
    f.write('{"step": 3, "lo')  # a kill in the middle of a write
  warnings = []
  assert state_files.read_json_lines(path, warnings.append) == [{"step": 1}, {"step": 2}]
  assert len(warnings) == 1 and "dropped a partial last line" in warnings[0]
  assert str(path) in warnings[0]


def test_a_damaged_line_before_the_last_is_an_error(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1}\n{"step": 2,,}\n{"step": 3}\n')
  with pytest.raises(InputError, match=rf"{path}, line 2, is damaged"):
    state_files.read_json_lines(path)


def test_rewrite_and_missing(tmp_path):
  path = tmp_path / "metrics.jsonl"
  assert state_files.read_json_lines(path) == []
  state_files.append_json_lines(path, [{"step": 1}, {"step": 2}, {"step": 3}])
  state_files.rewrite_json_lines(path, [{"step": 1}])
  assert state_files.read_json_lines(path) == [{"step": 1}]


def test_create_exclusive_publishes_whole_once_and_leaves_nothing_on_a_full_disk(
    tmp_path, monkeypatch):
  path = tmp_path / "lock"
  assert state_files.create_exclusive(path, '{"pid": 1}')
  assert not state_files.create_exclusive(path, '{"pid": 2}')  # exists: the first one stays
  assert json.loads(path.read_text()) == {"pid": 1}
  path.unlink()

  def full_disk(fd, data):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(os, "write", full_disk)
  with pytest.raises(OSError, match="No space"):
    state_files.create_exclusive(path, '{"pid": 3}')
  assert list(tmp_path.iterdir()) == []  # neither an empty lock nor a temporary file
