"""Metrics of a training run: progress bar, console lines, TensorBoard events, metrics.jsonl.

Per-step metrics stay on the device until a flush, so logging never blocks a step; the flush
also refuses non-finite losses, which is what keeps a NaN out of every checkpoint.
"""
import json
import math
import time
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm


class NonFiniteLossError(FloatingPointError):
  pass


class MetricsLog:
  def __init__(self, workdir: Path, *, enabled: bool, total_steps: int, images_per_step: int):
    self.workdir = Path(workdir)
    self.enabled = enabled
    self.total_steps = total_steps
    self.images_per_step = images_per_step
    self.pending: list[tuple[int, dict]] = []
    self.history: list[dict] = self._read_history()
    self.bar = None
    self.writer = None
    if enabled:
      from tensorboardX import SummaryWriter
      self.writer = SummaryWriter(str(self.workdir / "tensorboard"))

  def _read_history(self) -> list[dict]:
    path = self.workdir / "metrics.jsonl"
    if not path.exists():
      return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

  def start(self, step: int):
    # A resumed run drops history written after its checkpoint (those steps are redone).
    kept = [h for h in self.history if h["step"] <= step]
    if self.enabled and len(kept) != len(self.history):
      (self.workdir / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in kept))
    self.history = kept
    self.last_time, self.last_step = time.perf_counter(), step
    if self.enabled:
      self.bar = tqdm(total=self.total_steps, initial=step, desc="train", unit="step",
                      dynamic_ncols=True, mininterval=1.0)

  def add(self, step: int, metrics: dict):
    self.pending.append((step, metrics))
    if self.bar is not None:
      self.bar.update(1)

  def flush(self, step: int):
    """Averages the pending metrics, checks the loss, and writes them everywhere."""
    if not self.pending:
      return
    fetched = jax.device_get([m for _, m in self.pending])
    losses = np.array([float(m["loss"]) for m in fetched])
    if not np.all(np.isfinite(losses)):
      bad = self.pending[int(np.argmin(np.isfinite(losses)))][0]
      raise NonFiniteLossError(
          f"loss is {losses[~np.isfinite(losses)][0]} at step {bad}: training stopped and no "
          f"checkpoint was written after it (the last good one is kept in "
          f"{self.workdir / 'checkpoints'}). Lower optim.lr, set optim.grad_clip, or check "
          "the data")
    now = time.perf_counter()
    steps = step - self.last_step
    elapsed = max(now - self.last_time, 1e-9)
    row = {"step": step}
    for key in fetched[0]:
      row[key] = float(np.mean([float(m[key]) for m in fetched]))
    row["steps_per_s"] = steps / elapsed
    row["images_per_s"] = steps * self.images_per_step / elapsed
    self.pending.clear()
    self.last_time, self.last_step = now, step
    self.history.append(row)
    if not self.enabled:
      return
    for key, value in row.items():
      if key != "step":
        self.writer.add_scalar(key, value, step)
    self.writer.flush()
    with open(self.workdir / "metrics.jsonl", "a") as f:
      f.write(json.dumps(row) + "\n")
    self.bar.set_postfix(loss=f"{row['loss']:.4f}")
    self.message(" ".join(f"{k}={_fmt(v)}" for k, v in row.items()))

  def message(self, text: str):
    if self.enabled:
      tqdm.write(text)

  def close(self):
    if self.bar is not None:
      self.bar.close()
    if self.writer is not None:
      self.writer.close()


def _fmt(value) -> str:
  if isinstance(value, int):
    return str(value)
  return f"{value:.4g}" if math.isfinite(value) else str(value)
