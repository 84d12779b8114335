"""NVIDIA data-centre GPUs by the names their users write (`h100`, `8xh200`: N GPUs on one
host), each GPU's published figures (`dit_jax.chips.GPUS`), and compile-only devices of such a
host for ahead-of-time compilation (`dit_jax.perf.aot`) on a machine without a GPU.

XLA's GPU compiler needs no GPU when it is handed the GPU's description (a target config, built
here from the figures below); JAX's CUDA plugin without the CUDA libraries (`jax[cuda12-local]`,
in the `.[aot]` extra) runs it. cuDNN attention also needs the cuDNN library.
"""
import dataclasses
import re

from jax.experimental import topologies

from dit_jax.chips import GPUS, Gpu
from dit_jax.errors import InputError, MissingPackageError

GPUS_PER_HOST = (1, 2, 4, 8)
# Without a GPU XLA cannot autotune, and its default Triton GEMM tiling then fails on some
# shapes; cuBLAS GEMMs compile (their workspace is a few MiB of the memory reported).
COMPILER_OPTIONS = {"xla_gpu_enable_triton_gemm": False, "xla_gpu_autotune_level": 0}


@dataclasses.dataclass(frozen=True)
class Host:
  name: str                 # as written by the user, e.g. "8xh100"
  kind: str                 # key of GPUS
  gpus: int

  @property
  def chip(self) -> Gpu:
    return GPUS[self.kind]

  @property
  def topology_name(self) -> str:
    """The CUDA plugin's <partitions>x<hosts>x<devices per host>."""
    return f"1x1x{self.gpus}"


def parse_host(name: str) -> Host:
  match = re.fullmatch(rf"(?:(\d+)x)?({'|'.join(GPUS)})", name.strip().lower())
  gpus = int(match[1] or 1) if match else 0
  if not match or gpus not in GPUS_PER_HOST:
    raise InputError(f"--topology {name!r} is not a GPU host: use [N x]<gpu> with N in "
                     f"{GPUS_PER_HOST} GPUs of one host and <gpu> one of {tuple(GPUS)} "
                     "(e.g. h100, 8xh200)")
  return Host(name, match[2], gpus)


def target_config(gpu: Gpu) -> str:
  """XLA's GpuTargetConfigProto (text format) for a Hopper (sm_90) GPU."""
  return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_block_optin: 232448
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: {gpu.sm_count}
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(gpu.hbm_gbps * 1e9)}
  l2_cache_size: {gpu.l2_bytes}
  clock_rate_ghz: {gpu.clock_ghz}
  device_memory_size: {gpu.hbm_bytes}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
  cuda_compute_capability {{ major: 9 minor: 0 }}
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 }}
device_description_str: "{gpu.device_name}"
"""


def host_devices(host: Host) -> list:
  """Compile-only devices of one host of GPUs. Set JAX_PLATFORMS=cpu so that JAX does not
  look for a GPU."""
  try:
    import jax_plugins.xla_cuda12  # noqa: F401
  except ImportError as error:
    raise MissingPackageError(
        "compiling for a GPU needs JAX's CUDA plugin, which is not installed: pip install -e "
        "'.[aot]' (or pip install 'jax[cuda12-local]'); no GPU or CUDA library is needed")\
        from error
  topology = topologies.get_topology_desc(platform="cuda", target_config=target_config(
      host.chip), topology=host.topology_name)
  return list(topology.devices)
