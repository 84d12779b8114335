"""The published figures of the accelerators the library plans for: Cloud TPU generations
(`CHIPS`) and NVIDIA data-centre GPUs (`GPUS`), and the peak dense bf16 FLOP/s of a JAX device
by its `device_kind` (`peak_flops`).

The one table: `dit_jax.perf` builds TPU slices and GPU hosts from it for ahead-of-time
compilation, and the training log's MFU divides by its peak (so it sits below the engine).
A JAX device is one chip on every generation listed: v4 and v5p run their two TensorCores as
one "megacore" device, v5e and v6e have one core per chip.
"""
import dataclasses

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
  """Published per-chip figures (Cloud TPU system architecture pages)."""
  generation: str          # libtpu's topology prefix: v4, v5 (v5p), v5e, v6e
  hbm_gib: float
  bf16_tflops: float       # peak dense bf16
  hbm_gbps: float          # HBM bandwidth, GB/s
  ici_gbps: float          # bidirectional inter-chip interconnect per chip, GB/s
  dcn_gbps: float          # data-centre network per chip across slices, GB/s
  dims: int                # 2D or 3D torus
  cores_per_chip: int      # what the slice name counts per chip
  min_chips: int
  max_chips: int           # largest single slice


# DCN per chip: v5p 50 Gbps; v5e/v6e 2 x 100 Gbps NICs per 8-chip host = 25 Gbps per chip;
# v4 the same NIC share as v5p (no published per-chip figure; an assumption).
CHIPS = {
    "v4": Chip("v4", 32, 275, 1200, 600, 50 / 8, 3, 2, 4, 4096),
    "v5p": Chip("v5", 95, 459, 2765, 1200, 50 / 8, 3, 2, 4, 8192),
    "v5e": Chip("v5e", 16, 197, 819, 400, 25 / 8, 2, 1, 1, 256),
    "v6e": Chip("v6e", 32, 918, 1640, 800, 25 / 8, 2, 1, 1, 256),
}
# jax.Device.device_kind of each generation (libtpu's names, and the Cloud names some
# runtimes report) -> key of CHIPS.
TPU_DEVICE_KINDS = {"TPU v4": "v4", "TPU v5": "v5p", "TPU v5p": "v5p", "TPU v5 lite": "v5e",
                    "TPU v5e": "v5e", "TPU v6 lite": "v6e", "TPU v6e": "v6e"}


@dataclasses.dataclass(frozen=True)
class Gpu:
  """Published figures of one SXM GPU; memory is what CUDA reports for the device."""
  device_name: str          # CUDA's name for it (jax.Device.device_kind)
  hbm_bytes: int
  bf16_tflops: float        # peak dense bf16
  hbm_gbps: float           # memory bandwidth, GB/s
  ici_gbps: float           # NVLink, bidirectional per GPU, GB/s
  dcn_gbps: float           # InfiniBand NDR 400 Gb/s per GPU between hosts, GB/s
  l2_bytes: int
  sm_count: int = 132
  clock_ghz: float = 1.98

  @property
  def hbm_gib(self) -> float:
    return self.hbm_bytes / GIB


GPUS = {
    "h100": Gpu("NVIDIA H100 80GB HBM3", 84_942_979_072, 989, 3350, 900, 50, 50 * 2 ** 20),
    # 143771 MiB and a 60 MB L2: what nvidia-smi and PyTorch reported on the H200s lent here.
    "h200": Gpu("NVIDIA H200", 143_771 * 2 ** 20, 989, 4800, 900, 50, 60 * 2 ** 20),
}


def peak_flops(device_kind: str) -> float | None:
  """Peak dense bf16 FLOP/s of one JAX device of `device_kind` (`jax.devices()[0].device_kind`),
  or None for a device the tables do not know (a CPU, another GPU): no MFU is computed then."""
  if device_kind in TPU_DEVICE_KINDS:
    return CHIPS[TPU_DEVICE_KINDS[device_kind]].bf16_tflops * 1e12
  for gpu in GPUS.values():
    if gpu.device_name == device_kind:
      return gpu.bf16_tflops * 1e12
  return None
