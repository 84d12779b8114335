"""Checks of a config: `validate` (one check of every section, raising `ConfigError` that
names the field and the fix), and which fields may change when a run resumes
(`RESUMABLE_FIELDS`, `meaning_changes`; `with_defaults` reads an older recorded config)."""
import math
import re

import ml_collections

from dit_jax import flow
from dit_jax.config.schema import (OPTIM_SCHEDULES, VAE_RECONSTRUCTIONS, ConfigError, _error,
                                   _schema, base_config)
from dit_jax.models import create_model
from dit_jax.models.vae import create_vae

_UNTYPED = ("mesh.rules",)  # a preset name or a tuple of (logical, mesh axis) pairs
# Compute / parameter dtypes by name: what XLA computes in on every chip. float64 is left out:
# JAX (without jax_enable_x64) would silently compute in float32.
DTYPES = ("float32", "bfloat16", "float16")


def _at_least(low, note: str = ""):
  return (lambda v: v >= low), f">= {low}{note}"


def _positive(note: str = ""):
  return (lambda v: v > 0), f"> 0{note}"


def _one_of(options):
  return (lambda v: v in options), f"one of {tuple(options)}"


def _within(low, high, upper_open: bool = False, note: str = ""):
  if upper_open:
    return (lambda v: low <= v < high), f"in [{low}, {high}){note}"
  return (lambda v: low <= v <= high), f"in [{low}, {high}]{note}"


def _numbers(value, kinds) -> bool:
  """A list or tuple of numbers of `kinds` (bools excluded)."""
  return isinstance(value, (list, tuple)) and all(
      isinstance(v, kinds) and not isinstance(v, bool) for v in value)


# field -> (test, requirement): each applies where the field is present; evals.* is any
# evaluator of config.evals.
_RULES = {field: (test, need) for field, test, need in (
    *((field, *_at_least(0)) for field in (
        "seed", "model.depth_double", "model.depth_single", "data.num_threads", "data.prefetch",
        "data.worker_count", "optim.warmup_steps", "optim.weight_decay", "train.steps",
        "train.profile_start", "vae_train.kl_weight")),
    *((field, *_at_least(1)) for field in (
        "model.hidden_size", "model.num_heads", "model.patch_size", "model.base_channels",
        "model.num_res_blocks", "data.latent_channels", "data.text_length",
        "train.samples_per_class", "train.spike_window", "evals.*.batch_size", "sample.steps",
        "vae_train.eval_batches")),
    *((field, *_within(0, 1)) for field in ("model.class_dropout_prob", "model.text_dropout_prob")),
    *((f"optim.{b}", *_within(0, 1, upper_open=True)) for b in ("b1", "b2")),
    *((field, *_positive()) for field in ("model.mlp_ratio", "optim.eps")),
    ("model.depth", *_at_least(1, " (blocks in the stack)")),
    ("model.num_classes", *_at_least(0, " (0: unconditional)")),
    ("objective.kind", *_one_of(flow.objectives.KINDS)),
    ("data.batch_size", *_at_least(1, " (the global batch)")),
    ("data.image_size", *_at_least(1, ", or None for the stored size")),
    ("data.seed", *_within(0, 2 ** 32, upper_open=True)),
    ("data.latent_downsample", *_at_least(1, " (1: pixels)")),
    ("optim.lr", lambda v: math.isfinite(v) and v > 0, "positive and finite"),
    ("optim.schedule", *_one_of(OPTIM_SCHEDULES)),
    ("optim.end_lr_factor", *_within(0, 1, note=" (a fraction of optim.lr)")),
    ("optim.grad_clip", *_at_least(0, " (0: no clipping)")),
    ("train.log_every", *_at_least(0, " (0: only at the end)")),
    ("train.checkpoint_every", *_at_least(0, " (0: only at the end)")),
    ("train.keep_checkpoints", *_at_least(1, " (0 would delete every checkpoint)")),
    ("train.sample_every", *_at_least(0, " (0: never)")),
    ("train.ema_decay", *_within(0, 1, upper_open=True, note=" (0: no EMA)")),
    ("train.spike_factor", lambda v: v == 0 or v > 1, "0 (off) or > 1 (a multiple of the median)"),
    ("train.profile_steps", *_at_least(0, " (0: no trace)")),
    ("train.compilation_cache_dir", lambda v: isinstance(v, str),
     "a folder (local or gs://), '' (no cache) or None (<workdir>/compilation_cache)"),
    ("train.compilation_cache_min_compile_s", *_at_least(0, " (seconds; 0: cache every program)")),
    ("train.stop_check_every", *_at_least(1, " (steps between the processes' agreement on a "
                                             "signal)")),
    ("evals.*.every", *_at_least(0, " (0: never)")),
    ("evals.*.num_samples", *_at_least(2, " (statistics need two samples; 10 for the IS)")),
    ("evals.*.features", lambda v: v == "data" or v.startswith("inception:"),
     "'data' (a classifier of data.name) or 'inception:FILE' (pytorch-fid's weights)"),
    ("evals.*.at_steps", lambda v: _numbers(v, int) and all(s >= 1 for s in v),
     "a list of steps >= 1, e.g. (250, 500) ([]: none)"),
    ("evals.*.t_values",
     lambda v: _numbers(v, (int, float)) and len(v) > 0 and all(0 <= t <= 1 for t in v),
     "a non-empty list of times in [0, 1] (0 noise, 1 data), e.g. (0.05, 0.5, 0.95)"),
    ("sample.method", *_one_of(flow.METHODS)),
    ("sample.cfg_scale", lambda v: math.isfinite(v) and v >= 0,
     "a guidance scale >= 0 (0: unconditional, 1: conditional without guidance, > 1: "
     "stronger guidance)"),
    ("sample.shift", *_positive(" (1: the uniform grid)")),
    ("sample.eta", *_within(0, 1, note=" (ddim: 0 deterministic, 1 DDPM noise)")),
    ("sample.guide_channels", *_at_least(0, " (0: every channel)")),
    ("sample.spacing", *_one_of(flow.samplers.SPACINGS)),
    *((f"mesh.{axis}", lambda v: v == -1 or v >= 1, "-1 (the devices left) or >= 1")
      for axis in ("data", "fsdp", "tensor", "dcn_data", "dcn_fsdp", "dcn_tensor")),
    ("vae_train.reconstruction", *_one_of(VAE_RECONSTRUCTIONS)),
    *((f"{section}.{field}", *_one_of(DTYPES)) for section in ("model", "vae")
      for field in ("dtype", "param_dtype")),
)}


def _leaves(tree, prefix=""):
  """{'a.b': value} of a nested dict / ConfigDict."""
  out = {}
  for key, value in tree.items():
    if hasattr(value, "items"):
      out.update(_leaves(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _check_type(field, value, default):
  """The value has the kind of the schema's default (None defaults take anything)."""
  is_int = isinstance(value, int) and not isinstance(value, bool)
  if isinstance(default, bool):
    ok, need = isinstance(value, bool), "true or false"
  elif isinstance(default, int):
    ok, need = is_int, "an integer (it is never rounded)"
  elif isinstance(default, float):
    ok, need = is_int or isinstance(value, float), "a number"
  elif isinstance(default, str):
    ok, need = isinstance(value, str), "a string"
  else:
    return
  if not ok:
    raise _error(field, value, f"must be {need}, like the default {default!r}")


def _check_sections(config):
  """The cross-field checks the builders own (objective kinds, sampler against objective),
  run once here so that a bad config fails before any work starts."""
  try:
    if "objective" in config:
      objective = flow.make_objective(config.objective)
      if "sample" in config:
        flow.sampler_for(config.sample, objective)
    if "model" in config:
      model = create_model(config.model)
      width, heads = getattr(model, "hidden_size", None), getattr(model, "num_heads", None)
      if width and heads and width % heads:
        raise ConfigError(f"config.model.hidden_size={width} is not divisible by "
                          f"model.num_heads={heads}: change either, e.g. --config.model."
                          f"hidden_size={width - width % heads or heads}")
    if "vae" in config:
      create_vae(config.vae)
  except ConfigError:
    raise
  except ValueError as e:
    raise ConfigError(f"{e}; fix it in the config file or with --config.SECTION.FIELD=VALUE") \
        from None


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks every field once: its type against the schema's default, its range (`_RULES`) and
  the sections' cross-field rules. Returns config; raises ConfigError naming the field, the
  value and the fix."""
  if "model" in config and "name" not in config.model:
    raise _error("model.name", None, "must name the model, e.g. 'DiT-XL/2', 'UNet-small'")
  try:
    schema = _leaves(_schema(config))
  except ValueError as e:  # an unknown model name
    raise ConfigError(str(e)) from None
  for field, value in _leaves(config).items():
    if field in schema and field not in _UNTYPED:
      _check_type(field, value, schema[field])
    rule = _RULES.get(re.sub(r"^evals\.[^.]+\.", "evals.*.", field))
    if rule is not None and value is not None and not rule[0](value):  # None: unset
      raise _error(field, value, f"must be {rule[1]}")
  logged = {}
  for name, entry in config.get("evals", {}).items():  # metric names must not collide
    other = logged.setdefault((entry.type, entry.prefix), name)
    if other != name:
      raise _error(f"evals.{name}.prefix", entry.prefix,
                   f"is also evals.{other}'s, a {entry.type!r} evaluator too, so both would "
                   f"log the same metrics: give one another prefix, e.g. '{name}/'")
  _check_sections(config)
  return config


# Resuming.

# Fields that may differ between a run and its resumption: when and how long to train, log,
# checkpoint and sample, where the data lives and how fast it is read, the device layout and
# kernels. Every other leaf changes what the run computes (`meaning_changes`). model.dtype and
# attention_backend / remat_policy are execution choices (parameters stay param_dtype, their
# tree unchanged); model.scan_layers is not: it stacks the blocks' parameters.
RESUMABLE_FIELDS = (
    "train.steps", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
    "train.sample_every", "train.samples_per_class", "train.spike_factor", "train.spike_window",
    "train.profile_start", "train.profile_steps", "train.init_from",
    "train.compilation_cache_dir", "train.compilation_cache_min_compile_s",
    "train.stop_check_every",
    "sample",  # every sample.* field: samples do not feed back into training
    "evals",   # nor do evaluations
    "eval",    # (the single evaluator of runs recorded before config.evals)
    "mesh",    # every mesh.* field: checkpoints restore onto another mesh
    "data.data_dir", "data.latents", "data.vae", "data.num_threads", "data.prefetch",
    "data.worker_count",
    "model.attention_backend", "model.remat_policy", "model.dtype",
    "vae_train.eval_split", "vae_train.eval_batches",
)
ABSENT = "<absent>"  # meaning_changes' value of a field one of the two configs lacks


def _resumable(field: str) -> bool:
  return any(field == f or field.startswith(f + ".") for f in RESUMABLE_FIELDS)


def _same(a, b) -> bool:
  if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):  # JSON turns tuples to lists
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
  return a == b


def meaning_changes(saved, new) -> list[tuple[str, object, object]]:
  """[(field, saved value, new value)] for every leaf that differs between a saved run's
  config and the one resuming it, except RESUMABLE_FIELDS; a field only one side has shows
  ABSENT on the other. Dicts and ConfigDicts alike; empty when the resumption is safe.
  A field a saved run lacks (recorded before the field existed) counts as its default; a
  section neither config has (a VAE run has no `model`) is not compared."""
  cur = _leaves(new)
  defaults = {field: value for field, value in _leaves(base_config()).items() if field in cur}
  old = {**defaults, **_leaves(saved)}
  changes = []
  for field in sorted(set(old) | set(cur)):
    a, b = old.get(field, ABSENT), cur.get(field, ABSENT)
    if not _resumable(field) and not _same(a, b):
      changes.append((field, a, b))
  return changes


def with_defaults(saved) -> ml_collections.ConfigDict:
  """A recorded config (a run's config.json) with every schema field it lacks at its default:
  a run recorded before a field existed reads as that default, as `meaning_changes` counts it,
  so code may read every field directly."""
  config = ml_collections.ConfigDict(saved)
  present = _leaves(config)
  for field, value in _leaves(_schema(config)).items():
    if field in present:
      continue
    *parents, leaf = field.split(".")
    node = config
    for part in parents:
      if part not in node:
        node[part] = ml_collections.ConfigDict()
      node = node[part]
    node[leaf] = value
  return config


