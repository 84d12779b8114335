"""Metrics of a training run: progress bar, console lines, TensorBoard events, metrics.jsonl;
each training row with its throughput (images/s, TFLOP/s per device, MFU: `goodput.py`).

Per-step metrics stay on the device until a flush, so logging never blocks a step; the flush
returns them fetched, for the engine's divergence guard to check before anything is saved.

In a bucket (no append) metrics.jsonl is uploaded whole at each flush from the history kept
here, and TensorBoard events are written to a local temporary folder and uploaded (whole
objects) at each flush and at close, through the one I/O layer: tensorboardX's own GCS
writer would upload from its destructor at exit and retry for minutes when the bucket is gone.
"""
import io
import math
import shutil
import tempfile
import time

import jax
import numpy as np
from tqdm import tqdm

from dit_jax import paths
from dit_jax.engine.goodput import throughput
from dit_jax.state_files import (append_json_lines, read_json_lines, rewrite_json_lines,
                                 write_atomic)


class MetricsLog:
  """`flops_per_step` (model flops of one train step), `devices` and `peak_flops` (per device;
  None where the chip is not known, e.g. a CPU) give each row TFLOP/s per device and MFU."""

  def __init__(self, workdir, *, enabled: bool, total_steps: int, images_per_step: int,
               flops_per_step: float | None = None, devices: int = 1,
               peak_flops: float | None = None):
    self.workdir = paths.as_path(workdir)
    self.remote = paths.is_remote(self.workdir)
    self.enabled = enabled
    self.total_steps = total_steps
    self.throughput = dict(images_per_step=images_per_step, flops_per_step=flops_per_step,
                           devices=devices, peak_flops=peak_flops)
    self.pending: list[tuple[int, dict]] = []
    self.history: list[dict] = read_history(self.workdir)
    self.bar = self.writer = self.events = None
    if enabled:
      from tensorboardX import SummaryWriter  # deferred: only process 0 writes events
      self.events = tempfile.mkdtemp(prefix="dit-jax-events-") if self.remote else None
      self.writer = SummaryWriter(self.events or str(self.workdir / "tensorboard"))

  def start(self, step: int):
    # A resumed run drops history written after its checkpoint (those steps are redone), and a
    # partial last line (dropped when read) so that the next row starts on a line of its own.
    kept = [h for h in self.history if h["step"] <= step]
    if self.enabled and (self.workdir / "metrics.jsonl").exists():
      rewrite_json_lines(self.workdir / "metrics.jsonl", kept)
    self.history = kept
    self.last_time, self.last_step = time.perf_counter(), step
    if self.enabled:
      self.bar = tqdm(total=self.total_steps, initial=step, desc="train", unit="step",
                      dynamic_ncols=True, mininterval=1.0)

  def add(self, step: int, metrics: dict):
    self.pending.append((step, metrics))
    if self.bar is not None:
      self.bar.update(1)

  def flush(self, step: int, extra: dict | None = None) -> list[tuple[int, dict]]:
    """Averages the pending metrics into one row (with `extra`, e.g. the goodput so far),
    writes it everywhere, and returns the per-step metrics as host floats
    [(step, {name: value})]."""
    if not self.pending:
      return []
    steps = [s for s, _ in self.pending]
    fetched = [{k: float(v) for k, v in m.items()}
               for m in jax.device_get([m for _, m in self.pending])]
    now = time.perf_counter()
    row = {"step": step, **{key: float(np.mean([m[key] for m in fetched])) for key in fetched[0]}}
    row.pop("finite", None)  # a guard flag, not a metric
    row["steps_per_s"] = (step - self.last_step) / max(now - self.last_time, 1e-9)
    row.update(throughput(row["steps_per_s"], **self.throughput), **(extra or {}))
    self.pending.clear()
    self.last_time, self.last_step = now, step
    self._write(row)
    if self.bar is not None:
      self.bar.set_postfix(loss=f"{row['loss']:.4f}")
    return list(zip(steps, fetched))

  def scalars(self, step: int, values: dict):
    """Extra metrics of a step (an evaluator's), as their own row."""
    if values:
      self._write({"step": step, **{k: float(v) for k, v in values.items()}})

  def _write(self, row: dict):
    self.history.append(row)
    if not self.enabled:
      return
    for key, value in row.items():
      if key != "step":
        self.writer.add_scalar(key, value, row["step"])
    self.writer.flush()
    if self.remote:  # no append in a bucket: the whole log, from the history kept here
      rewrite_json_lines(self.workdir / "metrics.jsonl", self.history)
      self._upload_events()
    else:
      append_json_lines(self.workdir / "metrics.jsonl", [row])
    self.message(" ".join(f"{k}={_fmt(v)}" for k, v in row.items()))

  def message(self, text: str):
    if self.enabled:
      tqdm.write(text)

  def _upload_events(self):
    paths.upload_tree(self.events, self.workdir / "tensorboard")

  def close(self):
    if self.bar is not None:
      self.bar.close()
    if self.writer is not None:
      self.writer.close()
      self.writer = None
    if self.events is not None:
      try:
        if not paths.unreachable(self.workdir):  # (a failed run: the last flush is there)
          self._upload_events()
      finally:
        shutil.rmtree(self.events, ignore_errors=True)
        self.events = None


def read_history(workdir) -> list[dict]:
  """The rows of workdir/metrics.jsonl (training rows have a 'loss', evaluator rows not); a
  partial last line left by a kill or a full disk is dropped with a warning."""
  return read_json_lines(paths.as_path(workdir) / "metrics.jsonl")


def _fmt(value) -> str:
  return f"{value:.4g}" if not isinstance(value, int) and math.isfinite(value) else str(value)


def plot_loss_curve(history: list[dict], path):
  """Training loss (and learning rate) against step from the logged metrics."""
  if not history:
    return
  from matplotlib.figure import Figure  # deferred: matplotlib loads only when a run draws
  steps = [h["step"] for h in history]
  fig = Figure(figsize=(6, 3.5))
  ax = fig.subplots()
  ax.plot(steps, [h["loss"] for h in history], label="loss")
  ax.set(xlabel="step", ylabel="loss", yscale="log", title="training loss")
  ax.grid(True, which="both", alpha=0.3)
  if "lr" in history[0]:
    lr_ax = ax.twinx()
    lr_ax.plot(steps, [h["lr"] for h in history], color="tab:gray", alpha=0.5, label="lr")
    lr_ax.set_ylabel("learning rate")
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=100)
  write_atomic(path, png.getvalue())  # local or gs://, published whole
