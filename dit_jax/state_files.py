"""Small state files (JSON and JSON lines) that runs, sweeps, sample sets and converters keep:
one way to write them atomically and one way to read them honestly, on a local disk or in a
bucket (gs://, see `dit_jax.paths`).

A reader of such a file trusts it, so it is published whole or not at all: locally a
temporary file in the same folder renamed over the old one; in a bucket one upload (an
object appears, or is replaced, only when its upload finishes). An append-only log (JSON
lines) can still end in a partial line after a kill or a full disk: that line is dropped with
a warning, never fatal. Anything else that does not parse is an `InputError` naming the file
and the fix.

A bucket has no append, no rename and no exclusive create, so there: an append rewrites the
whole object (a log has one writer: the workdir lock), and create_exclusive is an upload with
the precondition "no object of this name yet" (ifGenerationMatch=0), which only one of any
number of racing creators, on any hosts, passes.
"""
import contextlib
import io
import json
import os
import shutil
import uuid
from typing import Any, Callable

import numpy as np

from dit_jax import paths
from dit_jax.errors import InputError

DAMAGED_FIX = "restore it from a backup, or delete it to start that part again"


def write_atomic(path, data: str | bytes) -> None:
  """Writes `data` to `path` so that a reader sees the old file or the new one, never a part:
  a temporary file in the same folder, flushed to disk, then renamed over `path`; in a bucket
  one upload."""
  if paths.is_remote(path):
    with paths.remote_errors(path):
      paths.filesystem(path).pipe_file(paths.object_name(path), _bytes(data))
    return
  with atomic_writer(path) as f:  # locally: temporary file, fsync, rename
    f.write(_bytes(data))


def create_exclusive(path, data: str | bytes) -> bool:
  """Creates `path` holding `data` unless it exists (then False): a complete temporary file
  linked into place, so that `path` is never seen empty or partial, even when the write fails
  (a full disk) or the process dies half-way. In a bucket: one upload with the precondition
  that no object of that name exists (ifGenerationMatch=0)."""
  if paths.is_remote(path):
    with paths.remote_errors(path):
      try:
        paths.filesystem(path).pipe_file(paths.object_name(path), _bytes(data), mode="create")
      except FileExistsError:  # gcsfs: the precondition failed (HTTP 412)
        return False
    return True
  path = paths.as_path(path)
  tmp = path.with_name(f".{path.name}.new-{os.getpid()}-{uuid.uuid4().hex[:8]}")
  try:
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
      data = _bytes(data)
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


def read_versioned(path) -> tuple[bytes, str]:
  """The content of `path` and its version: a name for this very file that changes whenever
  the file is replaced and never comes back (a bucket object's generation; locally the inode
  and change time of the file that was read). Raises FileNotFoundError when it is missing.
  In a bucket the version is read first: the content is of that version or a newer one."""
  if paths.is_remote(path):
    fs, name = paths.filesystem(path), paths.object_name(path)
    with paths.remote_errors(path):
      fs.invalidate_cache(name)  # another process may have replaced it since it was listed
      generation = fs.info(name)["generation"]
      return fs.cat_file(name), f"g{generation}"
  with open(path, "rb") as f:
    stat = os.fstat(f.fileno())
    return f.read(), f"i{stat.st_ino}-{stat.st_ctime_ns}"


def version(path) -> str | None:
  """read_versioned's version of `path` now, or None when it is missing."""
  try:
    return read_versioned(path)[1]
  except FileNotFoundError:
    return None


def remove(path) -> None:
  """Deletes the file or object `path` if it is there."""
  with paths.remote_errors(path):
    paths.as_path(path).unlink(missing_ok=True)


def read_bytes(path) -> bytes:
  """The whole content of `path`, local or gs://; FileNotFoundError (in a bucket
  MissingFileError, one) when it is missing, other failures named by remote_errors."""
  with paths.remote_errors(path):
    return paths.as_path(path).read_bytes()


def read_range(path, start: int, length: int) -> bytes:
  """`length` bytes of `path` from offset `start` (in a bucket one ranged request), e.g. one
  example of a large array file, without reading the rest."""
  if paths.is_remote(path):
    with paths.remote_errors(path):
      return paths.filesystem(path).cat_file(paths.object_name(path), start, start + length)
  with open(path, "rb") as f:
    f.seek(start)
    return f.read(length)


def npy_header(path) -> tuple[tuple, np.dtype, int]:
  """(shape, dtype, offset of the data) of the .npy `path` from its header, reading no data
  (in a bucket one small ranged read); ValueError when the header is bad or the file is not
  as long as it announces (cut short)."""
  with paths.open_read(path, block_size=1 << 16) as f:
    version = np.lib.format.read_magic(f)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, _, dtype = read_header(f)
    offset, size = f.tell(), f.seek(0, 2)
  if size != offset + int(np.prod(shape)) * dtype.itemsize:
    raise ValueError(f"{size} bytes where the header announces "
                     f"{offset + int(np.prod(shape)) * dtype.itemsize}")
  return shape, dtype, offset


def remove_tree(folder) -> None:
  """Deletes the folder `folder` and all under it, if it is there (in a bucket: every object
  under the prefix)."""
  if not paths.is_remote(folder):
    shutil.rmtree(folder, ignore_errors=True)
    return
  fs, name = paths.filesystem(folder), paths.object_name(folder).rstrip("/")
  with paths.remote_errors(folder):
    fs.invalidate_cache(name)
    try:
      fs.rm(name, recursive=True)
    except FileNotFoundError:
      pass
    fs.invalidate_cache(name)


@contextlib.contextmanager
def atomic_writer(path):
  """A binary file to stream a large `path` into (an .npz of 50,000 images, which write_atomic
  would need in memory whole), published only if the block ends without an error: locally a
  temporary file in the same folder renamed over `path`; in a bucket a resumable upload,
  finalised at the end and cancelled on an error (an object appears only when finalised).
  The bucket's file is write-only (no seek): zipfile then writes data descriptors."""
  if paths.is_remote(path):
    with paths.remote_errors(path):
      upload = paths.filesystem(path).open(paths.object_name(path), "wb")
    try:
      yield _Upload(upload, path)
    except BaseException:
      upload.discard()  # cancels the upload under way, if a part of it went up ...
      upload.closed = True  # ... and keeps close() from sending what is buffered
      raise
    with paths.remote_errors(path):
      upload.close()  # the object appears now, whole
    return
  path = paths.as_path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  try:
    with open(tmp, "wb") as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def write_npy(path, array: np.ndarray) -> None:
  """np.save of `array` (no pickles) to `path`, local or gs://, published whole."""
  with atomic_writer(path) as f:
    np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)


def read_npy(path) -> np.ndarray:
  """The array of the .npy `path`: memory-mapped locally (read as used); a bucket object is
  read whole."""
  if not paths.is_remote(path):
    return np.load(path, mmap_mode="r", allow_pickle=False)
  with paths.open_read(path) as f:
    return np.lib.format.read_array(f, allow_pickle=False)


def write_npz(path, arrays: dict) -> None:
  """np.savez of `arrays` (uncompressed, no pickles) to `path`, local or gs://, published
  whole (atomic_writer)."""
  with atomic_writer(path) as f:
    np.savez(f, **arrays)


class _Upload(io.RawIOBase):
  """The write end of an upload to gs:// `path` (write-only, no seek): a failed request is an
  error naming the path; closing it publishes nothing (atomic_writer does, at the end)."""

  def __init__(self, upload, path):
    super().__init__()
    self._upload, self._path = upload, path

  def writable(self) -> bool:
    return True

  def write(self, data) -> int:
    with paths.remote_errors(self._path):
      return self._upload.write(data)

  def tell(self) -> int:
    return self._upload.tell()


def write_json(path, value: Any, **dumps_kwargs) -> None:
  """`value` as JSON (one trailing newline), written atomically."""
  write_atomic(path, json.dumps(value, **dumps_kwargs) + "\n")


def read_json(path, what: str = "", fix: str = DAMAGED_FIX) -> Any:
  """The JSON value in `path`; a damaged file (a partial write, another format) raises
  InputError naming the file, `what` it is and the fix. A missing file raises
  FileNotFoundError as usual: callers decide what absence means."""
  path = paths.as_path(path)
  with paths.remote_errors(path):
    text = path.read_bytes()
  try:
    return json.loads(text)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise InputError(f"{path}{f' ({what})' if what else ''} is damaged ({e}): {fix}") from None


def read_json_lines(path, warn: Callable[[str], None] | None = print) -> list[dict]:
  """The rows of a JSON-lines log; [] when the file is missing. A partial last line (what a
  kill or a full disk leaves) is dropped, with a warning through `warn`; a damaged line before
  the last raises InputError naming the file and the line."""
  path = paths.as_path(path)
  try:
    with paths.remote_errors(path):
      lines = path.read_bytes().decode(errors="replace").split("\n")
  except FileNotFoundError:  # (not exists(): fsspec's says False for an unreachable bucket)
    return []
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
  """Appends `rows` to a JSON-lines log, one object per line. A bucket has no append (gcsfs's
  mode "a" replaces the object): there the object is read and uploaded again, whole, so the
  log is never cut; callers that keep the history (the run's metrics) rewrite it instead."""
  if not rows:
    return
  if paths.is_remote(path):
    try:
      with paths.remote_errors(path):
        text = paths.as_path(path).read_bytes()
    except FileNotFoundError:
      text = b""
    write_atomic(path, text + _lines(rows).encode())
    return
  path = paths.as_path(path)
  with open(path, "a") as f:
    f.write(_lines(rows))
    f.flush()


def rewrite_json_lines(path, rows: list[dict]) -> None:
  """Replaces a JSON-lines log with `rows`, atomically (e.g. a resumed run's history)."""
  write_atomic(path, _lines(rows))


def _lines(rows: list[dict]) -> str:
  return "".join(json.dumps(row) + "\n" for row in rows)


def _bytes(data: str | bytes) -> bytes:
  return data.encode() if isinstance(data, str) else data
