"""Sharding over a device mesh with axes (data, fsdp, tensor), driven by logical axis rules.

Models name the axes of their parameters and activations logically (`dit_jax.nn.axes`); a
rule set maps those names onto mesh axes, and `ShardingPlan` turns the result into
`NamedSharding`s for the train state, the batch and the jitted step. The same config runs on
one CPU, one GPU node or a pod: only `config.mesh` changes.

  data    pure data parallelism: the batch is split, parameters are replicated.
  fsdp    the batch is split AND parameters, gradients and optimizer state are sharded
          (ZeRO-3): each layer's weights are all-gathered just in time and gradients are
          reduce-scattered.
  tensor  Megatron-style tensor parallelism: attention heads and the MLP hidden width are
          split, the batch is not (activations are all-reduced inside each block).

Mesh sizes come from `config.mesh` (`-1` = the devices that are left). On multi-slice TPU
the `dcn_*` sizes say how the slices (joined by the slower data-centre network) are laid out;
each mesh axis then spans `ici * dcn` devices, with neighbours inside a slice.
"""
import contextlib
import dataclasses
import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dit_jax.errors import InputError
from dit_jax.nn import axes

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_MESH_AXES = ("data", "fsdp")  # the batch is split over both; tensor ranks share it

_ACTIVATIONS = ((axes.BATCH, BATCH_MESH_AXES), (axes.LENGTH, None), (axes.ACT_EMBED, None))
RULE_PRESETS = {
    # Replicated parameters; gradients are all-reduced.
    "dp": _ACTIVATIONS,
    # ZeRO-3: every matrix is split along its model-width (input) side.
    "fsdp": _ACTIVATIONS + ((axes.EMBED, "fsdp"),),
    # FSDP on the model width plus Megatron tensor parallelism on heads and MLP width.
    "fsdp_tp": _ACTIVATIONS + ((axes.EMBED, "fsdp"), (axes.HEADS, "tensor"),
                               (axes.MLP, "tensor"), (axes.ACT_HEADS, "tensor")),
}

# Which config field to change when a logical axis does not divide its mesh axis.
_FIELD_OF_AXIS = {
    axes.HEADS: "model.num_heads", axes.EMBED: "model.hidden_size",
    axes.MLP: "model.hidden_size / model.mlp_ratio (the MLP and modulation widths)",
}


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """`config.mesh`: per-axis sizes inside a slice (ICI) and across slices (DCN), and rules."""
  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  dcn_data: int = 1
  dcn_fsdp: int = 1
  dcn_tensor: int = 1
  rules: str | Sequence = "dp"  # a RULE_PRESETS name, or ((logical, mesh axis or None), ...)

  @classmethod
  def from_config(cls, config: Any) -> "MeshConfig":
    if config is None:
      return cls()
    get = config.get if isinstance(config, Mapping) or hasattr(config, "get") else (
        lambda key, default: getattr(config, key, default))
    return cls(**{f.name: get(f.name, f.default) for f in dataclasses.fields(cls)})

  @property
  def ici(self) -> tuple[int, int, int]:
    return self.data, self.fsdp, self.tensor

  @property
  def dcn(self) -> tuple[int, int, int]:
    return self.dcn_data, self.dcn_fsdp, self.dcn_tensor


def resolve_sizes(sizes: Sequence[int], total: int, fields: Sequence[str]) -> tuple[int, ...]:
  """Fills in the one `-1` so that the product is `total`; errors name the config fields."""
  if any(s == 0 or s < -1 for s in sizes) or list(sizes).count(-1) > 1:
    raise InputError(f"{', '.join(fields)} = {tuple(sizes)}: sizes must be positive, with at "
                     "most one -1 (meaning 'the devices that are left')")
  known = math.prod(s for s in sizes if s != -1)
  if total % known:
    raise InputError(f"{', '.join(fields)} = {tuple(sizes)} do not divide the {total} devices: "
                     f"choose sizes whose product divides {total}")
  resolved = tuple(total // known if s == -1 else s for s in sizes)
  if math.prod(resolved) != total:
    raise InputError(f"{', '.join(fields)} = {tuple(sizes)} multiply to {math.prod(resolved)} "
                     f"but there are {total} devices: make the product {total}, or set one "
                     "size to -1")
  return resolved


def device_grid(mesh_config=None, devices: Sequence | None = None) -> np.ndarray:
  """The devices arranged as the (data, fsdp, tensor) grid: neighbours (same slice, nearby on
  the interconnect) share the inner axes; slices differ along the dcn_* part of each axis."""
  cfg = MeshConfig.from_config(mesh_config)
  devices = list(jax.devices() if devices is None else devices)
  num_slices = len({getattr(d, "slice_index", 0) for d in devices})
  dcn = resolve_sizes(cfg.dcn, num_slices, ("mesh.dcn_data", "mesh.dcn_fsdp", "mesh.dcn_tensor"))
  ici = resolve_sizes(cfg.ici, len(devices) // num_slices,
                      ("mesh.data", "mesh.fsdp", "mesh.tensor"))
  if num_slices > 1:
    # An axis that is no product of whole torus axes (fsdp=128 on a 16x16 slice) splits one.
    return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices,
                                                allow_split_physical_axes=True)
  try:
    return mesh_utils.create_device_mesh(ici, devices, allow_split_physical_axes=True)
  except (ValueError, NotImplementedError, AssertionError):
    # A subset of an accelerator's devices has no physical layout to follow.
    return np.array(devices).reshape(ici)


def make_mesh(mesh_config=None, devices: Sequence | None = None) -> Mesh:
  """The (data, fsdp, tensor) mesh over `devices` (default: all of every process)."""
  return Mesh(device_grid(mesh_config, devices), MESH_AXES,
              axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def resolve_rules(rules: str | Sequence) -> tuple[tuple[str, Any], ...]:
  """A preset name or explicit ((logical, mesh axes), ...) pairs -> validated rules."""
  if isinstance(rules, str):
    if rules not in RULE_PRESETS:
      raise InputError(f"mesh.rules={rules!r} is not a preset; use one of {tuple(RULE_PRESETS)} "
                       "or a tuple of (logical axis, mesh axis or None) pairs")
    return RULE_PRESETS[rules]
  resolved = []
  for logical, target in rules:
    target = target if isinstance(target, str) or target is None else tuple(target)
    unknown = [t for t in _spec_axes(target) if t is not None and t not in MESH_AXES]
    if unknown:
      raise InputError(f"mesh.rules: ({logical!r}, {target!r}) names mesh axes {unknown}; the "
                       f"mesh axes are {MESH_AXES}")
    resolved.append((logical, target))
  return tuple(resolved)


def _spec_axes(entry) -> tuple[str, ...]:
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                  for k in path)


@dataclasses.dataclass(frozen=True)
class ShardingPlan:
  """A mesh plus mesh-level logical rules: shardings for parameters, state and batches."""
  mesh: Mesh
  rules: tuple

  @classmethod
  def create(cls, mesh_config=None, devices: Sequence | None = None) -> "ShardingPlan":
    cfg = MeshConfig.from_config(mesh_config)
    mesh = make_mesh(cfg, devices)
    rules = resolve_rules(cfg.rules)
    used = {a for _, target in rules for a in _spec_axes(target)}
    idle = [a for a in MESH_AXES if mesh.shape[a] > 1 and a not in used]
    if idle:
      raise InputError(f"mesh.{idle[0]}={mesh.shape[idle[0]]} but mesh.rules={cfg.rules!r} "
                       f"shards nothing over {idle[0]!r}: the devices would repeat the same "
                       f"work. Set mesh.{idle[0]}=1 or use rules that use it "
                       f"(presets: {tuple(RULE_PRESETS)})")
    return cls(mesh, rules)

  @property
  def batch_axes(self) -> tuple[str, ...]:
    """Mesh axes that split the batch dimension (from the BATCH rule)."""
    for logical, target in self.rules:
      if logical == axes.BATCH:
        return _spec_axes(target)
    return ()

  @property
  def batch_divisor(self) -> int:
    return math.prod(self.mesh.shape[a] for a in self.batch_axes)

  def named(self, spec: PartitionSpec) -> NamedSharding:
    return NamedSharding(self.mesh, spec)

  def replicated(self) -> NamedSharding:
    return self.named(PartitionSpec())

  @contextlib.contextmanager
  def context(self):
    """Activates the mesh and the rules, so models' `with_logical_constraint`s take effect.
    Enter it around every call of a jitted function that applies a model. (Not around
    `init`: flax would constrain DenseGeneral's flat kernel with the unflattened names.)"""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  # Parameters and train state.
  def mesh_specs(self, logical_specs):
    """Logical PartitionSpecs -> mesh PartitionSpecs (names without a rule: replicated)."""
    return nn.logical_to_mesh(logical_specs, self.rules)

  def check_divisible(self, abstract_tree, mesh_specs):
    """Every sharded dimension must split evenly; the error names the config field."""
    leaves = jax.tree_util.tree_flatten_with_path(abstract_tree)[0]
    specs = jax.tree.leaves(mesh_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
    for (path, leaf), spec in zip(leaves, specs):
      for dim, entry in enumerate(spec):
        parts = math.prod(self.mesh.shape[a] for a in _spec_axes(entry))
        if leaf.shape[dim] % parts:
          names = "*".join(f"mesh.{a}" for a in _spec_axes(entry))
          raise InputError(
              f"parameter {_path_str(path)} has shape {leaf.shape}; its dimension {dim} "
              f"({leaf.shape[dim]}) must be split over {names} = {parts} and is not divisible. "
              f"Change {self._field_hint(entry)} or {names}")

  def _field_hint(self, entry) -> str:
    for logical, target in self.rules:
      if target == entry and logical in _FIELD_OF_AXIS:
        return _FIELD_OF_AXIS[logical]
    return "the model size"

  def param_shardings(self, logical_specs, abstract_params):
    specs = self.mesh_specs(logical_specs)
    self.check_divisible(abstract_params, specs)
    return jax.tree.map(self.named, specs, is_leaf=lambda x: isinstance(x, PartitionSpec))

  def state_shardings(self, abstract_state, logical_param_specs):
    """Shardings for a TrainState: params and EMA by the rules, optimizer moments like the
    parameter they belong to, scalars (step, counts, keys) replicated."""
    params = self.param_shardings(logical_param_specs, abstract_state.params)
    return abstract_state.replace(
        step=self.replicated(), params=params, ema_params=params,
        opt_state=follow_params(abstract_state.opt_state, abstract_state.params, params,
                                self.replicated()),
        rng=self.replicated())

  # Batches.
  def batch_sharding(self, ndim: int = 1) -> NamedSharding:
    return self.named(PartitionSpec(self.batch_axes or None, *([None] * (ndim - 1))))

  def check_batch(self, global_batch: int, what: str = "data.batch_size"):
    """`what` names the field or flag the batch came from (`aot --step sample --batch-size`)."""
    if global_batch % self.batch_divisor:
      sizes = " * ".join(f"mesh.{a}={self.mesh.shape[a]}" for a in self.batch_axes)
      raise InputError(f"{what}={global_batch} must be divisible by {sizes} = "
                       f"{self.batch_divisor} (the batch is split over those axes): use a "
                       f"multiple of {self.batch_divisor}")

  def global_batch(self, local_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's slice of the batch -> global arrays split over the batch axes."""
    return {key: jax.make_array_from_process_local_data(self.batch_sharding(np.ndim(value)),
                                                        np.asarray(value))
            for key, value in local_batch.items()}


def follow_params(tree, abstract_params, param_values, default):
  """Maps every leaf of `tree` (an optimizer state) to the value of the parameter whose path
  is a suffix of the leaf's path and whose shape matches (Adam's mu/nu per parameter); other
  leaves (counts, masked placeholders) get `default`."""
  value_leaves = jax.tree.leaves(param_values, is_leaf=lambda x: isinstance(x, NamedSharding))
  by_path = {tuple(path): (leaf.shape, value) for (path, leaf), value in zip(
      jax.tree_util.tree_flatten_with_path(abstract_params)[0], value_leaves)}

  def lookup(path, leaf):
    path = tuple(path)
    for start in range(len(path)):
      hit = by_path.get(path[start:])
      if hit is not None and hit[0] == getattr(leaf, "shape", None):
        return hit[1]
    return default

  return jax.tree_util.tree_map_with_path(lookup, tree)


def shard_shape(shape: Sequence[int], spec: PartitionSpec,
                axis_sizes: Mapping[str, int]) -> tuple[int, ...]:
  """The per-device block of an array of `shape` sharded by `spec` over axes of these sizes."""
  out = list(shape)
  for dim, entry in enumerate(spec):
    out[dim] = -(-out[dim] // math.prod(axis_sizes[a] for a in _spec_axes(entry)))
  return tuple(out)


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None):
  """Joins a multi-process run. With no arguments JAX detects the cluster (Cloud TPU, SLURM,
  Open MPI, Kubernetes); on a plain multi-GPU node one process drives all GPUs and this is
  not needed."""
  kwargs = {k: v for k, v in dict(coordinator_address=coordinator, num_processes=num_processes,
                                  process_id=process_id).items() if v is not None}
  jax.distributed.initialize(**kwargs)


def params_digest(params) -> str:
  """sha256 of a parameter tree (every leaf's path, dtype, shape and bytes): the same for the
  same weights wherever they were loaded from, different for others. Identifies the model of
  a sample set and the feature net of a reference. Every process calls it: leaves sharded
  across processes are gathered."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):  # dict keys in sorted order
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      leaf = multihost_utils.process_allgather(leaf, tiled=True)
    array = np.ascontiguousarray(jax.device_get(leaf))
    digest.update(f"{jax.tree_util.keystr(path)} {array.dtype} {array.shape}\n".encode())
    digest.update(array.tobytes())
  return digest.hexdigest()
