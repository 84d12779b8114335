"""Stopping on a signal: SIGTERM (a scheduler, a Cloud TPU maintenance event) or SIGINT
(Ctrl-C) makes the loop save and stop at a step boundary, every process of a multi-process
run at the same step, without a collective after every step (`StopAgreement`):

- One process: the signal is seen at the next step boundary.
- Several processes, SIGTERM, with JAX's preemption service (on with `jax.distributed`, the
  default): JAX's own SIGTERM handler tells the coordination service, which sets the sync
  point to the step after the fastest process's current one;
  `multihost_utils.reached_preemption_sync_point(step)` is a local check after each step.
  SIGTERM is left to JAX for this: a Python handler would replace JAX's, and the notice
  would never leave the process.
- Several processes, SIGINT (or SIGTERM with the service off): every process gathers the
  signals of all every `train.stop_check_every` steps (one blocking process_allgather, which
  waits for the steps in flight) and stops if any process got one.
"""
import signal

import jax
import numpy as np
from jax.experimental import multihost_utils


class Preempted(Exception):
  """Raised after a SIGTERM / SIGINT made the loop save and stop; `exit_status` is what a
  scheduler sees (128 + signal number, as for a process the signal killed)."""

  def __init__(self, step: int, signum: int, state=None):
    self.step, self.signum, self.state = step, signum, state
    self.exit_status = 128 + signum
    super().__init__(f"{signal.Signals(signum).name}: saved step {step} and stopped; rerun the "
                     "same command to resume")


class StopSignals:
  """Turns `signals` (default SIGTERM and SIGINT) into a request to save and stop at the next
  step boundary. A second Ctrl-C interrupts at once (the last saved checkpoint stays)."""
  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, signals=SIGNALS):
    self.signum = None
    self._previous = {s: signal.signal(s, self._handle) for s in signals}

  def _handle(self, signum, frame):
    if self.signum == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum

  def requested(self) -> int | None:
    return self.signum

  def restore(self):
    for s, handler in self._previous.items():
      signal.signal(s, handler)


def agreed_signal(signum: int | None) -> int | None:
  """The signal any process received (the largest number, the same on every process): a
  blocking collective, which every process must call at the same step."""
  got = multihost_utils.process_allgather(np.array(signum or 0))
  return int(got.max()) or None


def preemption_service(step: int) -> bool:
  """Whether JAX's preemption service runs in this process (a multi-process run, the service
  not turned off with jax_enable_preemption_service); registers `step` as the current one."""
  if not jax.distributed.is_initialized():
    return False
  try:
    multihost_utils.reached_preemption_sync_point(step)
  except RuntimeError:  # "Preemption sync manager has not been initialized"
    return False
  return True


class StopAgreement:
  """Which signal, if any, stops the run after step `step`: the same answer on every process
  (see the module docstring). `step`: the step training starts from; `every`: the steps
  between two gathers of the signals (train.stop_check_every)."""

  def __init__(self, step: int, every: int):
    self.processes = jax.process_count()
    self.service = self.processes > 1 and preemption_service(step)
    self.signals = StopSignals((signal.SIGINT,) if self.service else StopSignals.SIGNALS)
    self.every = every

  def check(self, step: int) -> int | None:
    if self.processes == 1:
      return self.signals.requested()
    if self.service and multihost_utils.reached_preemption_sync_point(step):
      return signal.SIGTERM
    if step % self.every == 0:
      return agreed_signal(self.signals.requested())
    return None

  def restore(self):
    self.signals.restore()
