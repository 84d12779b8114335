"""Goodput (a fake clock and a fake compile counter), throughput and MFU against closed forms,
and the peak table the MFU divides by."""
import pytest

from dit_jax import chips
from dit_jax.engine.goodput import Goodput, summary_line, throughput
from dit_jax.models.dit import dit
from dit_jax.models.flops import PAPER_GFLOPS_256
from dit_jax.training.denoiser import train_step_flops


class FakeTime:
  def __init__(self):
    self.now = self.compiled = 0.0


def test_each_phase_is_its_wall_time_less_the_compilation_inside_it():
  t = FakeTime()
  clock = Goodput(lambda: t.compiled, clock=lambda: t.now)
  t.now += 1.0; t.compiled += 1.0           # the first step compiles (outside any phase)
  clock.first_step_done()
  with clock.timed("data"):
    t.now += 0.5
  with clock.timed("checkpoint"):
    t.now += 2.0
  with clock.timed("hooks"):
    t.now += 3.0; t.compiled += 1.0         # a sampler compiled inside a hook
  t.now += 3.5                              # dispatching and waiting for steps
  assert clock.totals() == dict(step=3.5, data=0.5, checkpoint=2.0, hooks=2.0, compile=2.0)
  shares = clock.shares()
  assert shares == {"goodput/step": 0.35, "goodput/data": 0.05, "goodput/checkpoint": 0.2,
                    "goodput/hooks": 0.2, "goodput/compile": 0.2}
  assert sum(shares.values()) == pytest.approx(1.0)
  summary = clock.summary()
  assert summary["goodput/wall_s"] == 10.0 and summary["goodput/first_step_s"] == 1.0
  assert summary_line(summary) == ("goodput: 35.0% step, 5.0% data, 20.0% checkpoint, 20.0% "
                                   "hooks, 20.0% compile of 10.0 s; first step done after 1.0 s")


def test_shares_sum_to_one_even_when_threads_compile_in_parallel():
  """Compile seconds summed over threads may exceed the wall clock: `step` floors at 0."""
  t = FakeTime()
  clock = Goodput(lambda: t.compiled, clock=lambda: t.now)
  t.now += 1.0; t.compiled += 1.5
  assert clock.totals()["step"] == 0.0
  assert sum(clock.shares().values()) == pytest.approx(1.0)


def test_tflops_and_mfu_of_dit_xl2_equal_the_closed_form():
  """DiT-XL/2 at 256 px (the paper's 118.64 forward Gflops, a multiply-add = 1 flop), batch
  256 on 64 v5e chips (197 bf16 TFLOP/s each) at 0.5 s a step: 3 passes x 2 flops per
  multiply-add x 118.64e9 x 256 / 0.5 s / 64 = 5.695 TFLOP/s per chip, MFU 2.89%."""
  flops = train_step_flops(dit("DiT-XL/2"), (32, 32, 4), 256)
  assert flops == pytest.approx(6 * PAPER_GFLOPS_256["DiT-XL/2"] * 1e9 * 256, rel=2e-4)
  row = throughput(2.0, images_per_step=256, flops_per_step=flops, devices=64,
                   peak_flops=chips.peak_flops("TPU v5 lite"))
  expected = 6 * 118.64e9 * 256 * 2.0 / 64 / 1e12
  assert row["images_per_s"] == 512.0
  assert row["tflops_per_device"] == pytest.approx(expected, rel=2e-4)
  assert row["mfu"] == pytest.approx(expected / 197, rel=2e-4)
  assert row["mfu"] == pytest.approx(0.0289, abs=1e-4)


def test_no_mfu_without_a_known_peak_and_no_tflops_without_flops():
  assert set(throughput(2.0, images_per_step=8, flops_per_step=1e12, devices=2)) == {
      "images_per_s", "tflops_per_device"}
  assert throughput(2.0, images_per_step=8) == {"images_per_s": 16.0}


@pytest.mark.parametrize("kind,tflops", [("TPU v4", 275), ("TPU v5", 459), ("TPU v5 lite", 197),
                                         ("TPU v6 lite", 918), ("NVIDIA H100 80GB HBM3", 989),
                                         ("NVIDIA H200", 989), ("cpu", None),
                                         ("NVIDIA H100 PCIe", None)])
def test_peak_flops_by_device_kind(kind, tflops):
  """JAX's device_kind of each chip of the tables (one JAX device = one chip); unknown
  devices, a CPU or a PCIe H100 (a lower peak), give no MFU rather than a wrong one."""
  assert chips.peak_flops(kind) == (tflops * 1e12 if tflops else None)
