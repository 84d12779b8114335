"""Cloud TPU slices by the names their users write (`v5e-16`, `v4-32`, `v5p-128`, `v6e-64`),
each chip's published figures (`dit_jax.chips.CHIPS`), and the compile-only devices of a slice
(through libtpu, with no TPU attached) for ahead-of-time compilation (`dit_jax.perf.aot`).

Names count what Cloud TPU counts: TensorCores for v4 and v5p (two per chip, run as one
"megacore" device), chips for v5e and v6e. Slices are powers of two; the physical shape
grows by doubling its shortest side (the last one when tied), which gives Cloud TPU's
shapes: v5p-8 2x2x1, v5p-64 2x4x4, v5p-128 4x4x4; v5e-16 4x4, v5e-256 16x16.
"""
import dataclasses
import math
import os

from jax.experimental import topologies

from dit_jax.chips import CHIPS, Chip
from dit_jax.errors import InputError, MissingPackageError

ALIASES = {"v5litepod": "v5e", "v6": "v6e", "v5lite": "v5e"}


@dataclasses.dataclass(frozen=True)
class Slice:
  name: str                 # as written by the user, e.g. "v5e-16"
  kind: str                 # key of CHIPS
  chips: int
  shape: tuple[int, ...]    # chips along each torus axis

  @property
  def chip(self) -> Chip:
    return CHIPS[self.kind]

  @property
  def topology_name(self) -> str:
    """libtpu's name, e.g. 'v5e:4x4' or 'v5:2x4x4'."""
    return f"{self.chip.generation}:{'x'.join(map(str, self.shape))}"


def _shape(chips: int, dims: int) -> tuple[int, ...]:
  shape = [2, 2, 1][:dims] if chips >= 4 else [1] * dims
  while math.prod(shape) < chips:
    smallest = min(shape)
    last = max(i for i, s in enumerate(shape) if s == smallest)
    shape[last] *= 2
  return tuple(shape)


def valid_names(kind: str) -> list[str]:
  chip = CHIPS[kind]
  names, chips = [], chip.min_chips
  while chips <= chip.max_chips:
    names.append(f"{kind}-{chips * chip.cores_per_chip}")
    chips = 4 if chips == 1 else 2 * chips
  return names


def parse_slice(name: str) -> Slice:
  kind, _, size = name.strip().lower().partition("-")
  kind = ALIASES.get(kind, kind)
  if kind not in CHIPS or not size.isdecimal() or f"{kind}-{int(size)}" not in valid_names(kind):
    examples = ", ".join(f"{v[0]} ... {v[-1]}" for v in map(valid_names, CHIPS))
    raise InputError(f"--topology {name!r} is not a Cloud TPU slice: use <generation>-<size> "
                     f"with a power-of-two size ({examples}; v4 and v5p sizes count TensorCores, "
                     "two per chip; v5litepod-N is v5e-N)")
  chips = int(size) // CHIPS[kind].cores_per_chip
  return Slice(name, kind, chips, _shape(chips, CHIPS[kind].dims))


def slice_devices(tpu_slice: Slice, num_slices: int = 1) -> list:
  """Compile-only devices of `num_slices` such slices (joined by DCN); each device has its
  `slice_index`. Needs libtpu; set JAX_PLATFORMS=cpu so that JAX does not look for a TPU."""
  try:
    import libtpu  # noqa: F401
  except ImportError as error:
    raise MissingPackageError(
        "compiling for a TPU topology needs the TPU runtime (libtpu), which is not installed: "
        "pip install -e '.[tpu]' (or pip install 'jax[tpu]'); no TPU needs to be attached")\
        from error
  # libtpu takes a machine-wide lock meant for processes that drive a TPU; compiling needs
  # none, and another process (a second compile, a test worker) may hold it.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  if num_slices < 1:
    raise InputError(f"--num-slices={num_slices} must be at least 1")
  chip = tpu_slice.chip
  wrap = tuple(s >= 4 and tpu_slice.chips >= (64 if chip.dims == 3 else 256)
               for s in (*tpu_slice.shape, 1)[:3])
  topology = topologies.get_topology_desc(
      topology_name=tpu_slice.topology_name, platform="tpu", num_slices=num_slices, wrap=wrap,
      chip_config_name="megacore" if chip.cores_per_chip == 2 else "default",
      chips_per_host_bounds=(2, 2, 1) if tpu_slice.chips >= 4 else (1, 1, 1))
  return list(topology.devices)
