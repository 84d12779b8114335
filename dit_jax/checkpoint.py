"""Orbax checkpoints of the train state and the data iterator position.

Saves are asynchronous (training goes on while arrays are written) and atomic (Orbax writes
to a temporary directory and renames it when complete, so a crash never leaves a half-written
step behind). The last `keep` steps are kept.
"""
from pathlib import Path

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Save / restore-latest of {"state": pytree of arrays, "data": JSON-able iterator state}."""

  def __init__(self, directory: str | Path, keep: int = 3, async_save: bool = True):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep,
                                           enable_async_checkpointing=async_save, create=True)
    self.directory = Path(directory).absolute()
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_state: dict | None = None):
    items = dict(state=ocp.args.StandardSave(state))
    if data_state is not None:
      items["data"] = ocp.args.JsonSave(data_state)
    self.manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, abstract_state, step: int | None = None):
    """Restores `step` (default: the latest) onto the shapes/shardings of `abstract_state`.

    Returns (state, data_state or None), or None when there is no checkpoint.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    items = dict(state=ocp.args.StandardRestore(abstract_state))
    has_data = (self.directory / str(step) / "data").exists()
    if has_data:
      items["data"] = ocp.args.JsonRestore()
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"], (restored["data"] if has_data else None)

  def wait(self):
    """Blocks until pending asynchronous saves are on disk."""
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(state):
  """ShapeDtypeStructs (with shardings) of a concrete state, to restore onto."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
