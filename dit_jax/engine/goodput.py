"""Where a run's wall clock goes (goodput), and the throughput figures of its log rows.

Goodput splits the wall clock since `engine.run` started (restore included) into shares that
sum to 1, each net of the compilation inside it:
    compile     JAX tracing, lowering and compiling, or loading from the persistent cache,
                wherever it happens (the first step, the samplers of hooks, restoring)
    checkpoint  restoring and saving (the blocking part of an asynchronous save)
    data        waiting for the next batch and placing it on the devices
    hooks       sample grids and evaluators
    step        the rest: dispatching train steps and waiting for the devices to run them,
                logging
Steps are dispatched asynchronously, so the host's wait for the devices shows up where it
blocks (a log flush, the first step): counted as `step`. Host time in `data` overlaps the
devices' work on steps already dispatched; with the input pipeline's prefetch keeping up it is
near 0, and well above 0 the devices likely wait for input.
"""
import contextlib
import time
from typing import Callable

PHASES = ("step", "data", "checkpoint", "hooks", "compile")


class Goodput:
  """The phase clock of one run. `compile_seconds()`: JAX's compilation time so far (a
  `compile_cache.CompileCounter`); `clock`: seconds (time.perf_counter)."""

  def __init__(self, compile_seconds: Callable[[], float], clock=time.perf_counter):
    self.clock, self.compile_seconds = clock, compile_seconds
    self.start, self.compile_start = clock(), compile_seconds()
    self.seconds = dict.fromkeys(PHASES[1:4], 0.0)
    self.first_step_s = None

  @contextlib.contextmanager
  def timed(self, phase: str):
    """Counts the block's wall time, less the compilation inside it, to `phase`."""
    start, compiled = self.clock(), self.compile_seconds()
    try:
      yield
    finally:
      elapsed = self.clock() - start - (self.compile_seconds() - compiled)
      self.seconds[phase] += max(elapsed, 0.0)

  def first_step_done(self):
    """Records, once, the seconds from the start to the end of the first step."""
    if self.first_step_s is None:
      self.first_step_s = self.clock() - self.start

  def totals(self) -> dict[str, float]:
    """Seconds per phase (PHASES); `step` is the wall clock the other phases leave."""
    wall = self.clock() - self.start
    out = {**self.seconds, "compile": self.compile_seconds() - self.compile_start}
    out["step"] = max(wall - sum(out.values()), 0.0)  # > 0 unless threads compiled in parallel
    return {phase: out[phase] for phase in PHASES}

  def shares(self) -> dict[str, float]:
    """{'goodput/<phase>': share of the wall clock}, summing to 1."""
    return _shares(self.totals())

  def summary(self) -> dict[str, float]:
    """The shares, the wall clock (`goodput/wall_s`) and the seconds to the end of the first
    step (`goodput/first_step_s`): the row written when the run ends."""
    totals = self.totals()
    row = {**_shares(totals), "goodput/wall_s": sum(totals.values())}
    if self.first_step_s is not None:
      row["goodput/first_step_s"] = self.first_step_s
    return row


def _shares(totals: dict[str, float]) -> dict[str, float]:
  wall = sum(totals.values()) or 1.0
  return {f"goodput/{phase}": seconds / wall for phase, seconds in totals.items()}


def summary_line(row: dict) -> str:
  """The end-of-run line of `Goodput.summary()`, e.g. 'goodput: 81.0% step, 2.1% data, ...'."""
  shares = ", ".join(f"{100 * row[f'goodput/{p}']:.1f}% {p}" for p in PHASES)
  first = row.get("goodput/first_step_s")
  return (f"goodput: {shares} of {row['goodput/wall_s']:.1f} s"
          + (f"; first step done after {first:.1f} s" if first is not None else ""))


def throughput(steps_per_s: float, *, images_per_step: int, flops_per_step: float | None = None,
               devices: int = 1, peak_flops: float | None = None) -> dict[str, float]:
  """A log row's throughput: images/s; with the model flops of one train step, TFLOP/s per
  device; with the devices' peak FLOP/s as well, MFU (achieved / peak, per device)."""
  row = {"images_per_s": steps_per_s * images_per_step}
  if flops_per_step:
    per_device = flops_per_step * steps_per_s / devices
    row["tflops_per_device"] = per_device / 1e12
    if peak_flops:
      row["mfu"] = per_device / peak_flops
  return row
