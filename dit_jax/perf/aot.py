"""Ahead-of-time compilation on a machine without the accelerator: `dit-jax aot`.

The target is a Cloud TPU slice (compile-only devices from libtpu) or one host of NVIDIA GPUs
(XLA's GPU compiler handed the GPU's description by JAX's CUDA plugin; `dit_jax.perf.gpu`). The
train step is the one `dit-jax train` runs for the config (the engine's `setup`: same model,
dtype, scan, remat, ShardingPlan, rules and donation), lowered on abstract inputs
(ShapeDtypeStructs with shardings) for those devices and compiled: nothing is allocated and no
data is read. `--step sample` compiles the `lax.scan` sampler of `dit-jax sample` instead.

The report, per device: XLA's memory analysis against the device's memory, compile time, XLA's
flop count next to the analytic one, every collective of the optimized HLO with the bytes it
moves per step (loop bodies counted once per iteration), and a roofline ESTIMATE of the step
time (compute at peak bf16, memory traffic at its bandwidth, collectives at the ICI / NVLink
or DCN bandwidth) that is never a measurement.
"""
import copy
import dataclasses
import math
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax import engine, flow, parallel
from dit_jax.config import apply_overrides, load_config, model_input_shape, validate
from dit_jax.errors import InputError, MissingPackageError, RunFailedError
from dit_jax.models import contract, create_model
from dit_jax.nn.attention import resolve_backend
from dit_jax.perf import gpu, hlo, tpu
from dit_jax.training import denoiser

STEPS = ("train", "sample")
GIB = 2 ** 30


class DoesNotFit(RunFailedError, MemoryError):
  """The compiled step needs more memory than a device has; `report` says by how much and how to
  fit it (the CLI prints it and exits with status 1)."""

  def __init__(self, report: "Report"):
    self.report = report
    super().__init__(format_levers(report))


@dataclasses.dataclass
class Report:
  topology: str
  compiler_topology: str         # libtpu's or the CUDA plugin's name of the devices
  num_slices: int
  chips: int
  step: str
  batch: int
  model: str
  settings: dict                 # dtype, scan_layers, remat_policy, rules, mesh sizes
  attention: str                 # the backend the step compiled with
  memory: dict                   # bytes per chip: arguments, outputs, temporaries, aliased, total
  hbm_bytes: int
  compile_s: float
  xla_flops: float               # per chip, XLA's count (multiply-add = 2)
  analytic_flops: float          # per chip, from the model's forward_flops
  collectives: list              # dicts: kind, count, bytes (per chip per step), dcn
  roofline: dict                 # seconds: compute, hbm, ici, dcn, estimate; bound
  compiled: bool = True          # False: the compiler refused it as too big (memory only)
  xla_attention_total: int | None = None  # the same step with XLA attention, if compiled
  levers: list = dataclasses.field(default_factory=list)  # ways to fit, when it does not

  @property
  def fits(self) -> bool:
    return self.memory["total"] <= self.hbm_bytes

  @property
  def headroom(self) -> int:
    return self.hbm_bytes - self.memory["total"]

  def as_dict(self) -> dict:
    return dict(dataclasses.asdict(self), fits=self.fits, headroom=self.headroom)


# ------------------------------------------------------------------------------------------
# Compiling


@dataclasses.dataclass
class Target:
  """Compile-only devices: a TPU slice (or several over DCN), or one host of GPUs."""
  name: str                      # as the user wrote it: v5e-16, 8xh100
  compiler_topology: str
  chip: tpu.Chip | gpu.Gpu       # the per-device figures: memory, peak bf16, bandwidths
  num_slices: int
  devices: list
  compiler_options: dict = dataclasses.field(default_factory=dict)

  @classmethod
  def create(cls, topology: str, num_slices: int = 1) -> "Target":
    try:
      tpu_slice = tpu.parse_slice(topology)
    except ValueError as not_tpu:
      try:
        host = gpu.parse_host(topology)
      except ValueError as not_gpu:
        raise InputError(f"{not_tpu}\n{not_gpu}") from None
      if num_slices != 1:
        raise InputError(f"--num-slices={num_slices}: a GPU target is one host of up to "
                         f"{max(gpu.GPUS_PER_HOST)} GPUs (e.g. 8xh100); use --num-slices 1")
      return cls(host.name, host.topology_name, host.chip, 1, gpu.host_devices(host),
                 gpu.COMPILER_OPTIONS)
    return cls(tpu_slice.name, tpu_slice.topology_name, tpu_slice.chip, num_slices,
               tpu.slice_devices(tpu_slice, num_slices))


def _abstract_batch(model, image_shape, batch: int, plan: parallel.ShardingPlan) -> dict:
  x, _, cond = contract.example_inputs(model, image_shape, batch, abstract=True)
  arrays = {"image": x, **(cond or {})}
  return {key: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=plan.batch_sharding(len(a.shape)))
          for key, a in arrays.items()}


def _lower_train(config, model, image_shape, plan):
  objective = flow.make_objective(config.objective)
  task = denoiser.denoiser_task(model, objective, image_shape)
  s = engine.prepare(task, config, plan)
  args = (s.abstract_state(), _abstract_batch(model, image_shape, config.data.batch_size, plan))
  return s.step_fn.lower(*args), args


def _lower_sample(config, model, image_shape, plan, batch: int):
  from dit_jax.sampling.sampler import ImageSampler
  plan.check_batch(batch, "--batch-size")  # the sample step's batch is the flag's
  objective = flow.make_objective(config.objective)
  sampler = ImageSampler(model, objective, config.sample, image_shape, plan)
  task = denoiser.denoiser_task(model, objective, image_shape)
  params = engine.abstract_params(task, plan)
  cond = contract.example_condition(model, batch, abstract=True)
  replicated = plan.replicated()
  cond = None if cond is None else {
      k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=replicated) for k, v in cond.items()}
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated)
  scale = jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated)
  with plan.context():
    return sampler.jitted.lower(params, cond, rng, scale, batch), (params, cond, rng, scale)


def _attention_used(model, image_shape, plan) -> str:
  """The kernel(s) each attention of the model compiles with ('/'-joined when its attentions
  differ, as a U-Net's levels may), from the contract's `attention_shapes`; 'n/a' without."""
  backend = getattr(model, "attention_backend", None)
  shapes = model.attention_shapes(*image_shape)
  if backend is None or not shapes:
    return "n/a"
  dtype = getattr(model, "dtype", jnp.float32)
  with plan.context():
    used = [resolve_backend(backend, dtype, head_dim, scores) for head_dim, scores in shapes]
  return "/".join(dict.fromkeys(used))


def compile_step(config, target: Target, step: str = "train", sample_batch: int = 0):
  """(compiled executable, Report) for `step` of `config` on `target`."""
  if step not in STEPS:
    raise InputError(f"--step={step!r} is not one of {STEPS}")
  model = create_model(config.model)
  image_shape = model_input_shape(config.data)
  plan = parallel.ShardingPlan.create(config.mesh, devices=target.devices)
  start = time.perf_counter()
  batch = int(config.data.batch_size) if step == "train" else int(sample_batch)
  try:
    if step == "train":
      lowered, args = _lower_train(config, model, image_shape, plan)
    else:
      lowered, args = _lower_sample(config, model, image_shape, plan, batch)
  except RuntimeError as error:  # JAX checks for the cuDNN library while lowering its attention
    if "cuDNN" not in str(error):
      raise
    raise MissingPackageError(
        f"cuDNN attention (model.attention_backend={config.model.get('attention_backend')!r}) "
        "needs the cuDNN library to compile for a GPU: pip install nvidia-cudnn-cu12, or "
        "compile with --config.model.attention_backend=xla") from error
  try:
    compiled = lowered.compile(target.compiler_options)
    memory = _memory(compiled.memory_analysis())
  except jax.errors.JaxRuntimeError as error:
    # libtpu refuses a program larger than HBM; its message carries the temporaries' size.
    temporaries = _refused_bytes(str(error))
    if temporaries is None:
      raise
    compiled, memory = None, _memory_of_refused(args, step, temporaries)
  compile_s = time.perf_counter() - start
  return compiled, _report(config, target, step, batch, model, image_shape, plan, compiled,
                           memory, compile_s)


_REFUSED = re.compile(r"RESOURCE_EXHAUSTED.*?required for [\w ]*?\(([\d.]+)([KMGT]?)\)", re.S)


def _refused_bytes(message: str) -> int | None:
  match = _REFUSED.search(message)
  if not match:
    return None
  scale = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}[match[2]]
  return int(float(match[1]) * scale)


def _per_chip_bytes(tree) -> int:
  return sum(math.prod(a.sharding.shard_shape(a.shape)) * np.dtype(a.dtype).itemsize
             for a in jax.tree.leaves(tree))


def _memory(analysis) -> dict:
  memory = dict(arguments=analysis.argument_size_in_bytes, outputs=analysis.output_size_in_bytes,
                temporaries=analysis.temp_size_in_bytes, aliased=analysis.alias_size_in_bytes)
  memory["total"] = (memory["arguments"] + memory["outputs"] + memory["temporaries"]
                     - memory["aliased"])
  return memory


def _memory_of_refused(args, step: str, temporaries: int) -> dict:
  """The memory of a program libtpu refused: arguments from their shardings; the train step
  returns (and aliases) its donated state."""
  arguments = _per_chip_bytes(args)
  state = _per_chip_bytes(args[0]) if step == "train" else 0
  return dict(arguments=arguments, outputs=state, temporaries=temporaries, aliased=state,
              total=arguments + temporaries)


def _analytic_flops(config, model, image_shape, step: str, batch: int, chips: int) -> float:
  macs = sum(model.forward_flops(*image_shape).values())
  if step == "train":  # forward + backward = 3 forwards; a multiply-add is 2 flops
    return 3 * 2 * macs * batch / chips
  sampler = flow.sampler_for(config.sample, flow.make_objective(config.objective))
  guided = 2 if model.condition_keys else 1  # ImageSampler's scale is traced: always doubled
  return 2 * macs * batch * sampler.evaluations * guided / chips


def _report(config, target, step, batch, model, image_shape, plan, compiled, memory,
            compile_s):
  """The Report of a compiled step; of a refused one (compiled None), its memory only."""
  chips = len(target.devices)
  cost = compiled.cost_analysis() if compiled is not None else {}
  cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
  found = [] if compiled is None else hlo.collectives(
      compiled.as_text(), chips // target.num_slices, target.num_slices)
  chip = target.chip
  analytic = _analytic_flops(config, model, image_shape, step, batch, chips)
  xla_flops = float(cost.get("flops", 0.0))
  flops = max(analytic, xla_flops)
  # XLA's bytes accessed count a loop body once: a lower bound for scanned layers. (Scaling
  # it by the flop undercount overshot: it also multiplied the work outside the loops.)
  hbm_bytes = float(cost.get("bytes accessed", 0.0))
  ici = sum(c["bytes"] for c in found if not c["dcn"])
  dcn = sum(c["bytes"] for c in found if c["dcn"])
  times = dict(compute=flops / (chip.bf16_tflops * 1e12),
               hbm=hbm_bytes / (chip.hbm_gbps * 1e9),
               ici=ici / (chip.ici_gbps / 2 * 1e9),  # one direction of the bidirectional figure
               dcn=dcn / (chip.dcn_gbps * 1e9))
  bound = max(times, key=times.get)
  # Overlapped perfectly, the step takes the longest of the four; not at all, their sum.
  roofline = dict(times, estimate=times[bound], no_overlap=sum(times.values()), bound=bound)
  settings = dict(dtype=str(getattr(model, "dtype", "")), scan_layers=getattr(
      model, "scan_layers", None), remat_policy=getattr(model, "remat_policy", None),
      rules=config.mesh.rules, mesh=dict(plan.mesh.shape))
  return Report(topology=target.name, compiler_topology=target.compiler_topology,
                num_slices=target.num_slices, chips=chips, step=step, batch=batch,
                model=str(config.model.name), settings=settings,
                attention=_attention_used(model, image_shape, plan), memory=memory,
                hbm_bytes=int(chip.hbm_gib * GIB), compile_s=compile_s,
                xla_flops=xla_flops, analytic_flops=analytic,
                collectives=found, roofline=roofline, compiled=compiled is not None)


# ------------------------------------------------------------------------------------------
# When it does not fit: the levers


def fit_levers(report: Report, compile_variant=None) -> list[str]:
  """What would fit the step, each with the figure it needs. Batch and FSDP figures scale
  the measured memory (temporaries with the per-chip batch, sharded arguments with the FSDP
  size): estimates; remat and scan are recompiled when `compile_variant` is given."""
  m, hbm, mesh = report.memory, report.hbm_bytes, report.settings["mesh"]
  levers = []
  state = m["arguments"]
  per_example = m["temporaries"] / max(report.batch, 1)
  divisor = math.prod(v for k, v in mesh.items() if k in ("data", "fsdp"))
  if report.step == "train" and per_example > 0 and hbm > state:
    fit_batch = int((hbm - state - m["outputs"] + m["aliased"]) / per_example)
    fit_batch -= fit_batch % max(divisor, 1)
    if 0 < fit_batch < report.batch:
      levers.append(f"data.batch_size={fit_batch} or less (about {fit_batch // divisor} per "
                    "chip; temporaries scale with the per-chip batch)")
  current = mesh.get("fsdp", 1)
  if report.settings["rules"] in ("fsdp", "fsdp_tp") or current > 1:
    fixed = m["total"] - state
    for fsdp in (2 ** k for k in range(1, 14)):
      if current < fsdp <= report.chips and fixed + state * current / fsdp <= hbm:
        levers.append(f"mesh.fsdp={fsdp} (state {state * current / fsdp / GIB:.2f} GiB per "
                      f"chip instead of {state / GIB:.2f})")
        break
  elif report.chips > 1:
    levers.append(f"mesh.rules=fsdp with mesh.fsdp={report.chips} mesh.data=1 (shards the "
                  f"{state / GIB:.2f} GiB of parameters and optimizer state per chip)")
  if compile_variant is not None:
    for field, value in (("remat_policy", "full"), ("remat_policy", "dots"),
                         ("scan_layers", True)):
      current = report.settings.get(field)
      if current is None or current == value or (field == "remat_policy" and current == "full"):
        continue
      total = compile_variant(**{field: value}).memory["total"]
      verdict = "fits" if total <= hbm else "still does not fit"
      levers.append(f"model.{field}={value!r}: {total / GIB:.2f} GiB per chip ({verdict})")
  return levers


def format_levers(report: Report) -> str:
  m = report.memory
  lines = [f"the {report.step} step of {report.model} at batch {report.batch} needs "
           f"{m['total'] / GIB:.2f} GiB per chip on {report.topology} "
           f"x{report.num_slices}, which has {report.hbm_bytes / GIB:.0f} GiB "
           f"(arguments {m['arguments'] / GIB:.2f}, temporaries {m['temporaries'] / GIB:.2f})"]
  if report.levers:
    lines.append("levers that would fit it: " + "; ".join(report.levers))
  else:
    lines.append("no single lever fits it: use a larger slice")
  return ". ".join(lines)


def check_fits(report: Report, compile_variant=None) -> Report:
  """Raises DoesNotFit, with the levers, if the step needs more HBM than a chip has.
  `compile_variant(**model_fields)` -> Report checks the remat and scan levers."""
  if not report.fits:
    report.levers = fit_levers(report, compile_variant)
    raise DoesNotFit(report)
  return report


def plan_step(config: str, overrides=(), topology: str = "v5e-8", num_slices: int = 1,
              step: str = "train", batch_size: int = 256,
              attention_baseline: bool = False) -> Report:
  """`dit-jax aot`: compiles the step of a config file (with its "section.field=value"
  overrides) for `topology` and returns the report. With `attention_baseline` the report
  also holds the total of the same step under XLA attention. Raises DoesNotFit (its
  `.report` has the levers, remat and scan recompiled) when it needs more memory than a chip."""
  cfg = validate(apply_overrides(load_config(config), overrides))
  target = Target.create(topology, num_slices)
  _, report = compile_step(cfg, target, step, batch_size)

  def variant(**fields):
    changed = copy.deepcopy(cfg)
    changed.model.update(fields)
    return compile_step(changed, target, step, batch_size)[1]

  if attention_baseline and report.attention not in ("xla", "n/a"):
    report.xla_attention_total = variant(attention_backend="xla").memory["total"]
  return check_fits(report, variant)


# ------------------------------------------------------------------------------------------
# Formatting


def _gib(n: float) -> str:
  return f"{n / GIB:.2f} GiB"


def format_table(report: Report) -> str:
  m, r = report.memory, report.roofline
  # XLA's GPU compiler reports no cost analysis without a GPU: no flops, no bytes accessed.
  costed = report.xla_flops > 0
  xla_flops = f"{report.xla_flops / 1e12:.3f} T" if costed else "n/a (no cost analysis)"
  hbm_ms = f"{r['hbm'] * 1e3:.1f} ms" if costed else "n/a"
  s = report.settings
  lines = [
      f"{report.step} step of {report.model}, batch {report.batch}, on {report.topology} "
      f"x{report.num_slices} ({report.chips} devices, compiler topology "
      f"{report.compiler_topology})",
      f"  settings: dtype {s['dtype']}, scan_layers {s['scan_layers']}, remat "
      f"{s['remat_policy']}, rules {s['rules']}, mesh {s['mesh']}, attention "
      f"{report.attention}",
      *([] if report.xla_attention_total is None else [
          f"  attention {report.attention} "
          f"{'saves' if report.xla_attention_total >= m['total'] else 'costs'} "
          f"{_gib(abs(report.xla_attention_total - m['total']))} per chip against XLA "
          f"attention ({_gib(report.xla_attention_total)} with it)"]),
      f"  compile: {report.compile_s:.1f} s",
      "  memory per chip:",
      f"    arguments    {_gib(m['arguments'])}",
      f"    outputs      {_gib(m['outputs'])}",
      f"    temporaries  {_gib(m['temporaries'])}",
      f"    aliased      {_gib(m['aliased'])} (donated state, counted once)",
      f"    total        {_gib(m['total'])} of {_gib(report.hbm_bytes)} HBM: "
      + (f"fits, {_gib(report.headroom)} headroom" if report.fits else
         f"does NOT fit, {_gib(-report.headroom)} over"),
      *([] if report.compiled else ["  libtpu refused the program as larger than HBM: only its "
                                    "memory is known"]),
      f"  flops per chip: XLA {xla_flops}, analytic {report.analytic_flops / 1e12:.3f} T "
      "(XLA counts a scanned loop body once)",
      "  collectives per step (bytes each chip moves):"]
  if not report.collectives:
    lines.append("    none")
  for c in report.collectives:
    where = "DCN" if c["dcn"] else "ICI"
    lines.append(f"    {c['kind']:<19} x{c['count']:<5} {c['bytes'] / 2**20:10.1f} MiB  {where}")
  lines += [
      "  roofline ESTIMATE of the step time (not a measurement; HBM from XLA's bytes "
      "accessed, a loop body counted once):",
      f"    compute {r['compute'] * 1e3:.1f} ms, HBM {hbm_ms}, ICI "
      f"{r['ici'] * 1e3:.1f} ms, DCN {r['dcn'] * 1e3:.1f} ms -> {r['estimate'] * 1e3:.1f} ms "
      f"if overlapped ({r['bound']}-bound), {r['no_overlap'] * 1e3:.1f} ms if not"]
  return "\n".join(lines)
