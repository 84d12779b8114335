"""Orbax checkpoints of the train state and the data iterator position.

Saves are asynchronous (training goes on while arrays are written) and atomic: locally Orbax
writes to a temporary directory and renames it when complete; in a bucket (gs://, no rename)
it writes the step in place and publishes it last with a `commit_success.txt` object, and a
step without one is not listed. So a crash never leaves a half-written step behind that a
restore would read (the next trainer deletes a killed save's temporary folder). The last `keep`
steps are kept.

Restoring verifies: a step that fails to restore (a truncated data file, a missing metadata
or manifest file) is skipped for the newest intact one, and the step used and the steps
skipped, with why, are reported. Training moves a skipped step to `checkpoints-damaged/`
(never deleting it) so that later saves of the same step number do not collide with it; in a
bucket that move is a copy of every object, then the deletion of the step
(`paths.move_tree`).
"""
import contextlib
import logging
import re
import sys
import time
import traceback

import jax
import orbax.checkpoint as ocp

from orbax.checkpoint._src.serialization import tensorstore_utils

from dit_jax import paths, state_files
from dit_jax.errors import InputError, MissingFileError, RunFailedError

# Orbax writes array data with tensorstore, whose GCS client retries a failed request up to 32
# times, waiting up to 32 s between tries: a lost bucket would hold a save for ~15 minutes.
# No Orbax option reaches those retries; its contexts are built from these two dicts. Bounded
# here to 5 tries over ~25 s (gcsfs, for the metadata, gives up after ~35 s).
GCS_RETRIES = {"max_retries": 5, "initial_delay": "1s", "max_delay": "8s"}
for _context in (tensorstore_utils._BASE_TS_CONTEXT, tensorstore_utils._DEFAULT_OCDBT_TS_CONTEXT):
  _context.setdefault("gcs_request_retries", GCS_RETRIES)
# What a failed request to a bucket says (tensorstore reports it as text, gcsfs as HttpError).
REMOTE_FAILURES = ("CURL error", "retry attempts failed", "HttpError")


class CheckpointError(RunFailedError, OSError):
  """No checkpoint can be read or written (damage, I/O); the message names the step and path."""


def _reason(error: Exception) -> str:
  """The first line of an error, short enough for one line of a report."""
  text = (str(error).strip() or type(error).__name__).splitlines()[0]
  return f"{type(error).__name__}: {text[:200]}"


def _os_error(error: BaseException | None) -> BaseException | None:
  """The OSError or failed bucket request in `error`'s chain (tensorstore reports them as
  text), else None."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    text = f"{type(error).__name__}: {error}"
    if isinstance(error, OSError) or any(
        marker in text for marker in ("OS error", "No space left", *REMOTE_FAILURES)):
      return error
    error = error.__cause__ or error.__context__
  return None


def _quiet_orbax_failures(record: logging.LogRecord) -> bool:
  """Drops Orbax's own tracebacks of a failed save: Checkpointer raises it once, clearly."""
  return not (record.exc_info and "orbax" in record.pathname)


def _abandoned_io(args) -> bool:
  """An unraisable error (sys.unraisablehook's args) of a tensorstore read or write that
  finished after Orbax closed the event loop awaiting it: a save or restore failed on another
  file (a full disk, a damaged step), the operations still in flight finish in C++ threads,
  and each printed a bare "RuntimeError: Event loop is closed" traceback."""
  return (isinstance(args.exc_value, RuntimeError) and "Event loop is closed" in
          str(args.exc_value) and any(frame.name == "call_soon_threadsafe" for frame in
                                      traceback.extract_tb(args.exc_traceback)))


def quiet_abandoned_io():
  """Installs (once per process) a sys.unraisablehook that drops `_abandoned_io` errors and
  passes anything else to the hook before; they may come as late as Python's exit."""
  previous = sys.unraisablehook
  if getattr(previous, "drops_abandoned_io", False):
    return

  def hook(args):
    if not _abandoned_io(args):
      previous(args)
  hook.drops_abandoned_io = True
  sys.unraisablehook = hook


class Checkpointer:
  """Save / restore of {"state": pytree of arrays, "data": JSON-able iterator state}."""

  def __init__(self, directory, keep: int = 3, async_save: bool = True):
    if not isinstance(keep, int) or keep < 1:
      raise InputError(f"train.keep_checkpoints={keep!r} must be an integer >= 1: a run keeps "
                       "at least its latest checkpoint")
    self.directory = paths.as_path(paths.absolute(directory))  # what Orbax takes
    if jax.process_index() == 0:  # before any save; the workdir lock keeps other trainers out
      _remove_interrupted_saves(self.directory)
    # Step folders are made before save() returns: made in the background, a failure to make
    # them (a lost bucket) would leave Orbax's writer threads waiting minutes for them at exit.
    self.manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
        async_options=ocp.AsyncOptions(create_directories_asynchronously=False)))
    self.failed = False
    logging.getLogger("absl").addFilter(_quiet_orbax_failures)
    quiet_abandoned_io()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_state: dict | None = None):
    items = dict(state=ocp.args.StandardSave(state))
    if data_state is not None:
      items["data"] = ocp.args.JsonSave(data_state)
    with self._io_errors():  # also raises the failure of the previous save
      self.manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, abstract_state, step: int | None = None):
    """Restores `step` (default: the latest) onto the shapes/shardings of `abstract_state`.

    Returns (state, data_state or None), or None when there is no checkpoint."""
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    items = dict(state=ocp.args.StandardRestore(abstract_state))
    has_data = (self.directory / str(step) / "data").exists()
    if has_data:
      items["data"] = ocp.args.JsonRestore()
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"], (restored["data"] if has_data else None)

  def restore_latest_intact(self, abstract_state, *, quarantine: bool = False, report=None):
    """restore() of the newest step that restores; None when there is no checkpoint.

    `report(text)` is told which step was used and which were skipped and why; with
    `quarantine` the skipped steps move to `checkpoints-damaged/` (process 0 of a training
    run). Raises CheckpointError when no step restores."""
    return first_intact(self.all_steps(), lambda s: self.restore(abstract_state, s),
                        self.directory, quarantine=self.quarantine if quarantine else None,
                        report=report)

  def quarantine(self, step: int):
    """Moves a damaged step out of the manager's directory, keeping its files."""
    target = self.directory.parent / f"{self.directory.name}-damaged" / f"{step}-{int(time.time())}"
    paths.move_tree(self.directory / str(step), target)
    self.manager.reload()
    return target

  def wait(self):
    """Blocks until pending asynchronous saves are on disk."""
    with self._io_errors():
      self.manager.wait_until_finished()

  def close(self):
    try:
      self.wait()
    finally:
      try:
        with self._io_errors():
          self.manager.close()  # stops the background threads even after a failed save
      finally:
        if not self.failed:  # else its threads may still log the failure as Python exits
          logging.getLogger("absl").removeFilter(_quiet_orbax_failures)

  @contextlib.contextmanager
  def _io_errors(self):
    """A save that fails on an I/O error (a full disk, a lost mount), here or in Orbax's
    background threads, becomes one CheckpointError (exit 1) saying what was kept."""
    try:
      yield
    except Exception as error:
      cause = _os_error(error)
      if cause is None:
        raise
      if self.failed:  # Orbax raises it again on close: it was reported once already
        return
      self.failed = True
      paths.mark_unreachable(self.directory)  # (if a bucket: the cleanup does not wait again)
      latest = self.latest_step()  # Orbax's own list: no request
      kept = (f"the steps saved before are intact (latest: {latest})" if latest is not None
              else "no step was saved before")
      fix = ("check the bucket and the network" if paths.is_remote(self.directory) else
             "free space or fix the disk")
      raise CheckpointError(
          f"could not save a checkpoint in {self.directory} ({_reason(cause)}): {kept}; "
          f"{fix}, then rerun the same command to resume") from error


class StepMoved(Exception):
  """A step failed to read because the listing changed under the read: it was deleted (a
  training run rotating its checkpoints) or a newer one was saved. Not damage: list again."""

  def __init__(self, step: int):
    super().__init__(f"checkpoint step {step} was deleted or superseded while it was read")
    self.step = step


def first_intact(steps: list[int], load, directory, *, quarantine=None, report=None,
                 moved=None):
  """load(step) for the newest of `steps` that loads without error (None if there are none);
  `quarantine(step)` moves each skipped step aside, `report(text)` says what happened.
  `moved(step)`, asked when a step fails, says whether the listing changed under the read:
  then StepMoved is raised instead of calling the step damaged."""
  skipped = []
  for step in sorted(steps, reverse=True):
    try:
      restored = load(step)
    except Exception as error:  # any other failure to read a step is damage: try the one before
      if moved is not None and moved(step):
        raise StepMoved(step) from error
      skipped.append((step, _reason(error)))
      continue
    if skipped and report is not None:
      moved_to = [quarantine(s) for s, _ in skipped] if quarantine else []
      lines = "; ".join(f"step {s} ({why})" for s, why in skipped)
      where = f"; moved to {moved_to[0].parent}" if moved_to else ""
      report(f"checkpoint: restored step {step}, skipped damaged {lines}{where}")
    return restored
  if skipped:
    lines = "\n".join(f"  step {s}: {why}" for s, why in skipped)
    raise CheckpointError(f"no checkpoint restores in {directory}:\n{lines}\n"
                          "Restore the files from a backup, or start a new --workdir")
  return None


def restore_params(directory, abstract_params: dict, report=None,
                   step: int | None = None, tries: int = 5):
  """(step, {name: params}) of the newest intact step (or of `step` only: a learning curve
  from the kept checkpoints), reading only the parameter subtrees named in `abstract_params`
  (e.g. {"ema_params": ...}): sampling never reads the optimizer state, so damage or a
  structure change there does not block it.

  A training run may save and rotate checkpoints meanwhile: a step deleted (no longer listed)
  or superseded (a newer one listed) while it is read is not damage, and the newest listed
  step is read again, up to `tries` times; a step that is there and unreadable is damage."""
  directory = paths.as_path(paths.absolute(directory))  # what Orbax takes
  reader = ocp.PyTreeCheckpointer()
  quiet_abandoned_io()  # a damaged step's reads still in flight when it is skipped

  def listed() -> list[int]:
    # In a bucket a step being written is already there, unpublished (no commit marker yet)
    return [int(name) for name in paths.list_names(directory)
            if name.isdigit() and ocp.step.is_checkpoint_finalized(directory / name)]

  def load(step):
    args = ocp.args.PyTreeRestore(
        abstract_params, restore_args=ocp.checkpoint_utils.construct_restore_args(
            abstract_params), partial_restore=True)
    return step, reader.restore(directory / str(step) / "state", args=args)

  for attempt in range(1, tries + 1):
    steps = listed()
    if step is not None:
      if step not in steps:
        raise MissingFileError(f"no checkpoint of step {step} in {directory} (kept: "
                               f"{sorted(steps)}; train.keep_checkpoints says how many stay)")
      steps = [step]

    def moved(s, newest=max(steps, default=-1)):
      now = listed()
      return s not in now or (step is None and max(now, default=s) > newest)

    try:
      return first_intact(steps, load, directory, report=report,
                          moved=moved if attempt < tries else None)
    except StepMoved as e:
      if report is not None:
        report(f"checkpoint: step {e.step} was deleted or superseded while it was read (a "
               "training run rotating its checkpoints); reading the newest listed step again")
  raise AssertionError("unreachable: the last try calls no step moved")


def _remove_interrupted_saves(directory):
  """Deletes what saves cut short by a kill left (locally Orbax writes step N into
  `N.orbax-checkpoint-tmp*` and renames it when complete): never listed nor read, they only
  take space. In a bucket a step is written in place and an unpublished one is overwritten."""
  if paths.is_remote(directory) or not directory.exists():
    return
  for name in paths.list_names(directory):
    if re.fullmatch(r"\d+\.orbax-checkpoint-tmp.*", name):
      state_files.remove_tree(directory / name)


def abstract_like(state):
  """ShapeDtypeStructs (with shardings) of a concrete state, to restore onto."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
