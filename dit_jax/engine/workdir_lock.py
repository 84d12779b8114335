"""One writer per run directory: `workdir/lock`, created atomically by process 0.

The lock file names its holder (host, pid, start time) and is never seen empty: its content is
written to a temporary file first, then linked into place only if no lock exists. A second
training of the same workdir stops with an error naming that holder. A lock left by a process
that died on this host, or an empty or unreadable one (left by an older version whose start
failed, e.g. on a full disk), is stale and taken over; one held from another host must be
cleared by hand (delete the file) after checking that run is gone. Take-overs on a host are
serialised (an flock of the workdir), so two starts never both take over one stale lock.
Every process of a multi-host run agrees on the outcome.
"""
import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from dit_jax.errors import DitJaxError, InputError
from dit_jax.state_files import create_exclusive, read_json


class WorkdirLockedError(DitJaxError, FileExistsError):
  """The workdir is held by another run; the message names the holder and the ways out."""
  exit_status = 2


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


class WorkdirLock:
  """Context manager; `enabled` on process 0 only (the others wait for its verdict)."""

  def __init__(self, workdir: str | Path, enabled: bool = True):
    self.path = Path(workdir) / "lock"
    self.enabled = enabled
    self.held = False

  def _holder(self) -> dict | None:
    """The lock's holder; {} when there is no lock, None when it is empty or unreadable."""
    try:
      holder = read_json(self.path)
    except FileNotFoundError:
      return {}
    except (OSError, InputError):
      return None
    return holder if isinstance(holder, dict) and holder else None

  def _try_create(self) -> bool:
    return create_exclusive(self.path, json.dumps(dict(
        host=socket.gethostname(), pid=os.getpid(), started=time.strftime("%Y-%m-%d %H:%M:%S"))))

  def _acquire(self) -> str | None:
    """None when acquired, else the error message."""
    with _host_mutex(self.path.parent):
      if self._try_create():
        return None
      holder = self._holder()
      if holder is None:
        print(f"{self.path} is empty or unreadable (left by a start that failed, e.g. on a full "
              "disk): taking it over")
      stale = not holder or (  # unreadable, or released since
          holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int)
          and not _alive(holder["pid"]))
      if stale:  # its process is gone; no other start on this host is between these lines
        if holder:
          print(f"{self.path} is held by process {holder['pid']} on this host, which is gone "
                "(killed, or its machine restarted): taking it over")
        self.path.unlink(missing_ok=True)
        if self._try_create():
          return None
        holder = self._holder() or {}
    who = (f"process {holder.get('pid')} on host {holder.get('host')} (since "
           f"{holder.get('started')})" if holder else "an unknown process")
    return (f"workdir {self.path.parent} is in use by {who}: two runs writing one workdir "
            f"would mix their checkpoints and logs. Wait for it to finish, pick another "
            f"--workdir, or, if that run is gone (e.g. its host died), delete {self.path}")

  def __enter__(self):
    error = self._acquire() if self.enabled else None
    if jax.process_count() > 1:  # the others learn process 0's verdict
      failed = multihost_utils.process_allgather(np.array(error is not None)).any()
      if failed and error is None:
        error = f"process 0 could not lock {self.path} (see its log)"
    if error:
      raise WorkdirLockedError(error)
    self.held = self.enabled
    return self

  def __exit__(self, *exc):
    if self.held:
      self.path.unlink(missing_ok=True)
      self.held = False


@contextlib.contextmanager
def _host_mutex(folder: Path):
  """Holds an flock of `folder` (released by the kernel if the process dies), so that the
  read-judge-replace of a stale lock is one step among the starts on this host. Where the file
  system has no flock, goes on without it."""
  fd = os.open(folder, os.O_RDONLY)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
      pass
    yield
  finally:
    os.close(fd)  # releases the flock
