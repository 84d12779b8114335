"""One writer per run directory: `workdir/lock`, created atomically by process 0, on a local
disk or in a bucket (gs://).

The lock file names its holder (host, pid, start time) and is never seen empty: it is created
whole, only if no lock exists (`state_files.create_exclusive`: a link locally, an upload with
the precondition ifGenerationMatch=0 in a bucket). A second training of the same workdir stops
with an error naming that holder. A lock left by a process that died on this host, or an empty
or unreadable one (left by an older version whose start failed, e.g. on a full disk), is stale
and taken over; one held from another host must be cleared by hand (delete the file) after
checking that run is gone.

A take-over is one step even among starts on several hosts (a shared file system, a bucket):
the taker first creates `lock.takeover-<version>`, named after the very lock it judged stale
(its inode and change time locally, its generation in a bucket; never reused), exclusively.
Only that claim's creator may delete the lock, and only while it is still that version; the
others stop as if the lock were held. Every process of a multi-host run agrees on the outcome.
"""
import json
import os
import socket
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from dit_jax import paths
from dit_jax.errors import DitJaxError
from dit_jax.state_files import create_exclusive, read_versioned, remove, version


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

  def __init__(self, workdir, enabled: bool = True):
    self.path = paths.as_path(workdir) / "lock"
    self.enabled = enabled
    self.held = False

  def _holder(self) -> tuple[dict | None, str | None]:
    """(the lock's holder, its version): ({}, None) when there is no lock, (None, version) when
    it is empty or unreadable."""
    try:
      text, seen = read_versioned(self.path)
    except FileNotFoundError:
      return {}, None
    try:
      holder = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
      return None, seen
    return (holder if isinstance(holder, dict) and holder else None), seen

  def _try_create(self) -> bool:
    return create_exclusive(self.path, json.dumps(dict(
        host=socket.gethostname(), pid=os.getpid(), started=time.strftime("%Y-%m-%d %H:%M:%S"))))

  def _take_over(self, seen: str) -> bool:
    """Replaces the stale lock of version `seen`; False when another start got there first."""
    claim = self.path.parent / f"lock.takeover-{seen}"
    if not create_exclusive(claim, json.dumps(dict(host=socket.gethostname(), pid=os.getpid()))):
      return False  # another start is taking over this very lock
    try:
      if version(self.path) == seen:  # still the stale one: only this claim's holder deletes it
        remove(self.path)
      return self._try_create()
    finally:
      remove(claim)  # a later claim of `seen` finds a newer version, and deletes nothing

  def _acquire(self) -> str | None:
    """None when acquired, else the error message."""
    if self._try_create():
      return None
    holder, seen = self._holder()
    if holder is None:
      print(f"{self.path} is empty or unreadable (left by a start that failed, e.g. on a full "
            "disk): taking it over")
    stale = not holder or (  # unreadable, or released since
        holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int)
        and not _alive(holder["pid"]))
    if stale:  # its process is gone
      if holder:
        print(f"{self.path} is held by process {holder['pid']} on this host, which is gone "
              "(killed, or its machine restarted): taking it over")
      if self._take_over(seen) if seen else self._try_create():
        return None
      holder = self._holder()[0] or {}
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
    if not self.held:
      return
    self.held = False
    if paths.unreachable(self.path):  # the run failed for it: tell, rather than wait again
      print(f"{self.path} is left in place (the bucket cannot be reached): a rerun on host "
            f"{socket.gethostname()} takes it over; from another host, delete it first")
      return
    remove(self.path)

