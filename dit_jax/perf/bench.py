"""Throughput: `dit-jax bench` times the real jitted, sharded train step or sampler.

The train step is exactly the one `dit-jax train` runs (loss, gradients, AdamW, EMA) on random
data already on the devices, so the figure isolates the model and its sharding from input
loading; the sampler is the `lax.scan` one of `dit-jax sample` (`ImageSampler`: every step,
guidance included, in one compiled call, the samples split over the devices). Any model of the
contract can be timed (a DiT preset, or the model of a config). Achieved TFLOP/s counts a
multiply-add as 2 flops of the model's analytic count (`model.forward_flops`): 3 forward
passes per image for a train step (`denoiser.train_step_flops`, as the training log counts),
one per model evaluation (two under guidance) for sampling; MFU divides by the chip's peak
(`dit_jax.chips`).
"""
import collections
import contextlib
import dataclasses
import glob
import gzip
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dit_jax import chips, engine, flow, parallel, paths
from dit_jax.config import apply_overrides, base_config, load_config, model_input_shape
from dit_jax.engine.goodput import throughput
from dit_jax.errors import InputError, MissingFileError
from dit_jax.models import create_model
from dit_jax.models.contract import example_condition
from dit_jax.models.dit import dit
from dit_jax.perf import hlo
from dit_jax.sampling.sampler import ImageSampler
from dit_jax.training import denoiser


@dataclasses.dataclass
class BenchResult:
  images_per_s: float
  step_ms: float
  compile_s: float
  train_tflops_per_s: float  # per device
  memory_gib: float | None   # per device: arguments + outputs + temporaries of the step
  profile: list | None = None  # with profile_dir: where a step's kernel time goes (profile_rows)
  mfu: float | None = None     # TFLOP/s per device / the chip's peak bf16 (None: not known)

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def bench_train_step(model, image_shape, batch_size: int, *, steps: int = 10,
                     mesh_config=None, seed: int = 0, config=None,
                     profile_dir: str | None = None) -> BenchResult:
  """Compiles the train step for `model` on `batch_size` images of `image_shape` under
  `mesh_config` (default: data parallel over all devices) and times `steps` steps; the
  optimizer, EMA and objective are those of `config` (default: the base config), built by
  `engine.prepare` as `dit-jax train` builds them. With `profile_dir`, then traces
  PROFILE_STEPS more steps there (jax.profiler, with a Perfetto trace) and sums their
  kernels by kind and place (`profile_rows`)."""
  config = _bench_config(config, batch_size, mesh_config)
  plan = parallel.ShardingPlan.create(config.mesh)
  task = denoiser.denoiser_task(model, flow.make_objective(config.objective), image_shape)
  prepared = engine.prepare(task, config, plan)
  state = engine.init_state(task, prepared.optimizer, jax.random.PRNGKey(seed), plan,
                            prepared.ema)
  rng = np.random.default_rng(seed)
  local = {"image": rng.standard_normal((batch_size, *image_shape)).astype(np.float32)}
  # The condition's values do not change the step's cost: the contract's placeholders.
  local.update({k: np.asarray(v) for k, v in (example_condition(model, batch_size) or {}).items()})
  batch = plan.global_batch(local)
  step_fn = prepared.step_fn
  compiled, compile_s = _compile(step_fn, state, batch)
  memory = compiled.memory_analysis()
  for _ in range(2):  # warm steps
    state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step_fn(state, batch)
  jax.block_until_ready((state, metrics))
  seconds = (time.perf_counter() - start) / steps
  if not np.isfinite(float(metrics["loss"])):
    raise engine.DivergenceError(f"non-finite loss {float(metrics['loss'])} while "
                                 "benchmarking: lower the learning rate or check the model")
  profile = None
  if profile_dir is not None:
    with _local_folder(profile_dir) as trace_dir:
      with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        for _ in range(PROFILE_STEPS):
          state, metrics = step_fn(state, batch)
        jax.block_until_ready((state, metrics))
      profile = profile_rows(latest_trace(trace_dir), hlo.instructions(compiled.as_text()),
                             PROFILE_STEPS)

  rates = throughput(1 / seconds, images_per_step=batch_size, devices=plan.mesh.devices.size,
                     flops_per_step=denoiser.train_step_flops(model, image_shape, batch_size),
                     peak_flops=chips.peak_flops(jax.devices()[0].device_kind))
  footprint = None
  if memory is not None:  # donated state aliases its outputs: count it once
    footprint = (memory.argument_size_in_bytes + memory.output_size_in_bytes
                 + memory.temp_size_in_bytes - memory.alias_size_in_bytes) / 2**30
  return BenchResult(images_per_s=rates["images_per_s"], step_ms=1000 * seconds,
                     compile_s=compile_s, train_tflops_per_s=rates["tflops_per_device"],
                     memory_gib=footprint, profile=profile, mfu=rates.get("mfu"))


PROFILE_STEPS = 3


def _bench_config(config, batch_size: int, mesh_config):
  """A copy of `config` (default: the base config) training `batch_size` images per step on
  the mesh of `mesh_config` (default: data parallel over all devices)."""
  config = base_config() if config is None else config.copy_and_resolve_references()
  config.data.batch_size = batch_size
  mesh = dataclasses.asdict(parallel.MeshConfig.from_config(mesh_config))
  config.mesh = ml_collections.ConfigDict(mesh)
  return config


def _compile(jitted, *args):
  """(executable, seconds to lower and compile it). Calls of `jitted` on such arguments then
  run this executable (jit's cache): timed calls after it exclude compilation."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - start


@contextlib.contextmanager
def _local_folder(folder):
  """`folder`, or for a gs:// one a local temporary folder uploaded there at the end: the
  profiler writes files through its own (local) file system."""
  if not paths.is_remote(folder):
    yield folder
    return
  paths.check_bucket(folder)  # before the steps are traced, not after
  with tempfile.TemporaryDirectory(prefix="dit-jax-trace-") as local:
    yield local
    paths.upload_tree(local, folder)


def latest_trace(profile_dir: str) -> str:
  """The newest Perfetto trace jax.profiler wrote under `profile_dir`."""
  traces = glob.glob(os.path.join(profile_dir, "plugins", "profile", "*",
                                  "perfetto_trace.json.gz"))
  if not traces:
    raise MissingFileError(f"no perfetto_trace.json.gz under {profile_dir}/plugins/profile")
  return max(traces, key=os.path.getmtime)


def profile_rows(trace_path: str, instructions: dict, steps: int) -> list[dict]:
  """Kernel time per step of a traced program, by (kind, region), largest first: the events
  that name an HLO op (on the accelerator's own timeline when the trace has one, else device
  0's), their kind and place from `hlo.instructions` of the compiled program. Each row: kind,
  region, ms (per step), kernels (per step), share (of the summed kernel time)."""
  with gzip.open(trace_path, "rt") as f:
    events = json.load(f)["traceEvents"]
  names = {e["pid"]: e["args"]["name"] for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  # The accelerator's own timeline: a /device: process with HLO ops (not, say, the TPU
  # runtime's "/device:CUSTOM:Megascale Trace", which libtpu adds once it is loaded).
  device_pids = {e["pid"] for e in events if "hlo_op" in e.get("args", {})
                 and names.get(e["pid"], "").startswith("/device:")}
  totals = collections.defaultdict(lambda: [0.0, 0])
  for e in events:
    args = e.get("args", {})
    if e.get("ph") != "X" or "hlo_op" not in args:
      continue
    if device_pids and e["pid"] not in device_pids:
      continue
    if not device_pids and args.get("device_ordinal", "0") != "0":
      continue
    kind, op_name = instructions.get(args["hlo_op"], ("other", ""))
    total = totals[(kind, hlo.op_region(op_name) if op_name else "")]
    total[0] += e["dur"] / 1000  # microseconds -> ms
    total[1] += 1
  summed = sum(ms for ms, _ in totals.values()) or 1.0
  rows = [dict(kind=kind, region=region, ms=ms / steps, kernels=count / steps, share=ms / summed)
          for (kind, region), (ms, count) in totals.items()]
  return sorted(rows, key=lambda r: -r["ms"])


@dataclasses.dataclass
class SampleBenchResult:
  images_per_s: float
  batch_s: float             # one compiled call: `batch_size` samples, every step
  compile_s: float
  evaluations: int           # model evaluations per sample (x2 batch under guidance)
  tflops_per_s: float        # per device

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def bench_sample(model, image_shape, batch_size: int, sample_config, *, repeats: int = 1,
                 mesh_config=None, seed: int = 0, config=None) -> SampleBenchResult:
  """Compiles the sampler of `sample_config` (method, steps, cfg_scale) for `batch_size`
  samples of `model` under `mesh_config` (default: split over all devices) and times
  `repeats` calls. The objective (the prediction converted to the sampler's) is `config`'s;
  without a config, DDPM / DDIM sample the published DiT's objective (a learned variance
  when the model outputs one) and Euler / Heun flow matching."""
  if config is None:
    config = base_config()
    if dict(sample_config)["method"] in ("ddpm", "ddim"):
      config.objective.kind = "ddpm_hybrid" if getattr(model, "learn_sigma", False) else "ddpm"
  objective = flow.make_objective(config.objective)
  plan = parallel.ShardingPlan.create(mesh_config)
  plan.check_batch(batch_size)
  params = engine.init_params(denoiser.denoiser_task(model, objective, image_shape),
                              jax.random.PRNGKey(seed), plan)
  sampler = ImageSampler(model, objective, sample_config, image_shape, plan)
  cond = example_condition(model, batch_size)
  rng = jax.random.PRNGKey(seed + 1)
  scale = jnp.float32(sampler.sampler.cfg_scale)
  _, compile_s = _compile(sampler.jitted, params, cond, rng, scale, batch_size)
  sampler.sample(params, cond, rng, count=batch_size)  # a warm call
  start = time.perf_counter()
  for i in range(repeats):
    images = sampler.sample(params, cond, jax.random.fold_in(rng, i), count=batch_size)
  seconds = (time.perf_counter() - start) / repeats  # `sample` returns host arrays: synced
  if not np.isfinite(images).all():
    raise engine.DivergenceError("non-finite samples while benchmarking")
  evaluations = sampler.sampler.evaluations
  guided = 2 if cond is not None else 1  # the scale is traced: the doubled batch always runs
  macs = sum(model.forward_flops(*image_shape).values())
  tflops = 2 * macs * evaluations * guided * batch_size / seconds / plan.mesh.devices.size / 1e12
  return SampleBenchResult(images_per_s=batch_size / seconds, batch_s=seconds,
                           compile_s=compile_s, evaluations=evaluations, tflops_per_s=tflops)


# ------------------------------------------------------------------------------------------
# `dit-jax bench`: the model of the flags or of a config, one timed row, its one-line summary

BENCH_DEFAULTS = dict(model="DiT-XL/2", dtype="bfloat16", attention="auto", remat="none")


def mesh_fields(spec: str) -> dict:
  """The mesh config of a --mesh string such as "data=2,fsdp=4,rules=fsdp" ("": all data)."""
  fields = {}
  for item in filter(None, spec.split(",")):
    key, sep, value = item.partition("=")
    if not sep or not (key == "rules" or value.lstrip("-").isdigit()):
      raise InputError(f"--mesh {spec!r}: expected key=value items with whole-number sizes, "
                       "such as data=2,fsdp=4,rules=fsdp")
    fields[key] = value if key == "rules" else int(value)
  allowed = [f.name for f in dataclasses.fields(parallel.MeshConfig)]
  unknown = sorted(set(fields) - set(allowed))
  if unknown:  # a typo would otherwise be dropped and the bench run on another mesh
    raise InputError(f"--mesh {spec!r}: unknown keys {unknown}; the keys are "
                     f"{', '.join(allowed)}")
  return fields


def bench_model(model: str | None = None, *, config: str | None = None, overrides=(),
                dtype: str | None = None, attention: str | None = None,
                remat: str | None = None, scan: bool = False, image_size: int = 256,
                latent_downsample: int = 8, channels: int = 4):
  """(name, model, image shape, config or None) to time: a DiT preset built from the preset
  fields (None: BENCH_DEFAULTS), or the model of a `config` file with its overrides."""
  given = dict(model=model, dtype=dtype, attention=attention, remat=remat)
  preset_flags = [f"--{k}" for k, v in given.items() if v is not None] + ["--scan"] * scan
  if config:
    if preset_flags:
      raise InputError(f"{preset_flags} set a preset's fields; with --config set them in the "
                       "config, e.g. --config.model.dtype=bfloat16 "
                       "--config.model.attention_backend=cudnn")
    cfg = apply_overrides(load_config(config), overrides)
    return cfg.model.name, create_model(cfg.model), model_input_shape(cfg.data), cfg
  if overrides:
    raise InputError(f"--config.* overrides need --config: got {list(overrides)}")
  get = {k: BENCH_DEFAULTS[k] if v is None else v for k, v in given.items()}
  name = get["model"] if get["model"].startswith("DiT-") else f"DiT-{get['model']}"
  net = dit(name, dtype=jnp.dtype(get["dtype"]), attention_backend=get["attention"],
            scan_layers=scan, remat_policy=get["remat"])
  side = image_size // latent_downsample
  return name, net, (side, side, channels), None


def bench_row(name: str, model, image_shape, batch_size: int, *, config=None, mesh: str = "",
              steps: int = 10, sample: tuple[str, int] | None = None, cfg_scale: float = 4.0,
              profile_dir: str | None = None) -> dict:
  """Times the train step (or with `sample` = (method, steps) the sampler, `steps` batches)
  and returns one row: the model's design fields, the devices and the timings."""
  mesh_config = mesh_fields(mesh)
  if sample:
    sample_config = dict(method=sample[0], steps=sample[1], cfg_scale=cfg_scale, shift=1.0,
                         eta=0.0)
    result = bench_sample(model, image_shape, batch_size, sample_config, repeats=steps,
                          mesh_config=mesh_config, config=config)
  else:
    result = bench_train_step(model, image_shape, batch_size, steps=steps,
                              mesh_config=mesh_config, config=config, profile_dir=profile_dir)
  # Fields a family may lack (the U-Net has no scan) are reported as None.
  design = {k: getattr(model, f, None) for k, f in (("attention", "attention_backend"),
            ("scan", "scan_layers"), ("remat", "remat_policy"))}
  design["dtype"] = str(np.dtype(model.dtype))
  return dict(model=name, batch=batch_size, input=list(image_shape), **design,
              devices=len(jax.devices()), device=jax.devices()[0].device_kind,
              **result.as_dict())


def format_bench_row(row: dict, sample: tuple[str, int] | None = None,
                     cfg_scale: float = 4.0) -> str:
  """The row of `bench_row` as a summary line (and the top 20 profile regions, if any)."""
  head = (f"{row['model']} batch {row['batch']} {row['dtype']} attention={row['attention']} "
          f"scan={row['scan']} remat={row['remat']} on {row['devices']} x {row['device']}: ")
  if sample:
    return head + (f"{sample[0]} {sample[1]} steps, guidance {cfg_scale}: "
                   f"{row['images_per_s']:.1f} images/s, {row['batch_s']:.2f} s per batch, "
                   f"{row['tflops_per_s']:.1f} TFLOP/s per device, compile "
                   f"{row['compile_s']:.1f} s")
  memory = f"{row['memory_gib']:.2f} GiB" if row["memory_gib"] else "n/a"
  mfu = f" (MFU {row['mfu']:.1%})" if row.get("mfu") else ""
  lines = [head + f"{row['images_per_s']:.1f} images/s, {row['step_ms']:.1f} ms/step, "
           f"{row['train_tflops_per_s']:.1f} TFLOP/s per device{mfu}, step memory {memory}, "
           f"compile {row['compile_s']:.1f} s"]
  lines += [f"  {p['kind']:<13} {p['region']:<40} {p['ms']:9.2f} ms/step {p['kernels']:6.0f} "
            f"kernels {p['share']:6.1%}" for p in (row["profile"] or [])[:20]]
  return "\n".join(lines)
