"""One writer per run directory: `workdir/lock`, created atomically by process 0.

The lock file names its holder (host, pid, start time). A second training of the same workdir
stops with an error naming that holder. A lock left by a process that died on this host is
stale and taken over; one held from another host must be cleared by hand (delete the file)
after checking that run is gone. Every process of a multi-host run agrees on the outcome.
"""
import json
import os
import socket
import time
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from dit_jax.errors import DitJaxError


class WorkdirLockedError(DitJaxError, FileExistsError):
  exit_status = 2
  pass


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

  def _holder(self) -> dict:
    try:
      return json.loads(self.path.read_text())
    except (OSError, ValueError):
      return {}

  def _try_create(self) -> bool:
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      json.dump(dict(host=socket.gethostname(), pid=os.getpid(),
                     started=time.strftime("%Y-%m-%d %H:%M:%S")), f)
    return True

  def _acquire(self) -> str | None:
    """None when acquired, else the error message."""
    if self._try_create():
      return None
    holder = self._holder()
    same_host = holder.get("host") == socket.gethostname()
    if same_host and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
      self.path.unlink(missing_ok=True)  # stale: its process is gone
      if self._try_create():
        return None
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
