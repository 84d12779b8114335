"""Small state files (JSON and JSON lines) that runs, sweeps, sample sets and converters keep:
one way to write them atomically and one way to read them honestly.

A reader of such a file trusts it, so it is published whole or not at all (written to a
temporary file in the same folder, then renamed over the old one). An append-only log (JSON
lines) can still end in a partial line after a kill or a full disk: that line is dropped with
a warning, never fatal. Anything else that does not parse is an `InputError` naming the file
and the fix.
"""
import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable

from dit_jax.errors import InputError

DAMAGED_FIX = "restore it from a backup, or delete it to start that part again"


def write_atomic(path, data: str | bytes) -> None:
  """Writes `data` to `path` so that a reader sees the old file or the new one, never a part:
  a temporary file in the same folder, flushed to disk, then renamed over `path`."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  try:
    with open(tmp, "wb") as f:
      f.write(data.encode() if isinstance(data, str) else data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def create_exclusive(path, data: str | bytes) -> bool:
  """Creates `path` holding `data` unless it exists (then False): a complete temporary file
  linked into place, so that `path` is never seen empty or partial, even when the write fails
  (a full disk) or the process dies half-way."""
  path = Path(path)
  tmp = path.with_name(f".{path.name}.new-{os.getpid()}-{uuid.uuid4().hex[:8]}")
  try:
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
      data = data.encode() if isinstance(data, str) else data
      while data:
        data = data[os.write(fd, data):]
      os.fsync(fd)
    finally:
      os.close(fd)
    os.link(tmp, path)  # fails when `path` exists: only one creator wins
    return True
  except FileExistsError:
    return False
  finally:
    tmp.unlink(missing_ok=True)


def write_json(path, value: Any, **dumps_kwargs) -> None:
  """`value` as JSON (one trailing newline), written atomically."""
  write_atomic(path, json.dumps(value, **dumps_kwargs) + "\n")


def read_json(path, what: str = "", fix: str = DAMAGED_FIX) -> Any:
  """The JSON value in `path`; a damaged file (a partial write, another format) raises
  InputError naming the file, `what` it is and the fix. A missing file raises
  FileNotFoundError as usual: callers decide what absence means."""
  path = Path(path)
  text = path.read_bytes()
  try:
    return json.loads(text)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise InputError(f"{path}{f' ({what})' if what else ''} is damaged ({e}): {fix}") from None


def read_json_lines(path, warn: Callable[[str], None] | None = print) -> list[dict]:
  """The rows of a JSON-lines log; [] when the file is missing. A partial last line (what a
  kill or a full disk leaves) is dropped, with a warning through `warn`; a damaged line before
  the last raises InputError naming the file and the line."""
  path = Path(path)
  if not path.exists():
    return []
  lines = path.read_bytes().decode(errors="replace").split("\n")
  rows = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as e:
      if number == len(lines):  # the last line, without its newline: cut short by a kill
        if warn is not None:
          warn(f"{path}: dropped a partial last line ({len(line)} bytes) left by an "
               "interrupted write")
        continue
      raise InputError(f"{path}, line {number}, is damaged ({e}): {DAMAGED_FIX}") from None
  return rows


def append_json_lines(path, rows: list[dict]) -> None:
  """Appends `rows` to a JSON-lines log, one object per line."""
  if not rows:
    return
  path = Path(path)
  with open(path, "a") as f:
    f.write("".join(json.dumps(row) + "\n" for row in rows))
    f.flush()


def rewrite_json_lines(path, rows: list[dict]) -> None:
  """Replaces a JSON-lines log with `rows`, atomically (e.g. a resumed run's history)."""
  write_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))
