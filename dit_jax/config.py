"""The one config schema: every field a run reads with its default (`base_config`,
`model_section`, `vae_config`), loading `path/to/config.py[:arg]` with `--config.a.b=value`
overrides, `validate` (one check of every section, raising `ConfigError`), and which fields
may change when a run resumes (`RESUMABLE_FIELDS`, `meaning_changes`)."""
import ast
import dataclasses
import importlib.util
import math
import re
from pathlib import Path

import ml_collections
import numpy as np

from dit_jax import flow
from dit_jax.errors import InputError, MissingFileError
from dit_jax.models import create_model
from dit_jax.models.vae import create_vae, vae_arch, vae_preset

OPTIM_SCHEDULES = ("constant", "cosine")
VAE_RECONSTRUCTIONS = ("l1", "l2")


class ConfigError(InputError):
  """A config field no run can use; the message names the field, the value and the fix."""


def _error(field: str, value, need: str) -> ConfigError:
  return ConfigError(f"config.{field}={value!r} {need}; fix it in the config file or pass "
                     f"--config.{field}=VALUE")


# Schema: sections and their defaults.


def _plain(value):
  """A model field as a config value: dtypes by name ('bfloat16'), everything else as is."""
  if isinstance(value, type) and hasattr(value, "dtype"):  # jnp.float32 and friends
    return np.dtype(value).name
  return value


def model_section(name: str, **fields) -> ml_collections.ConfigDict:
  """config.model for model `name`: every field of its family with the value the name gives
  (a preset's sizes, the class defaults otherwise), then `fields`. Unknown fields are an error.

      config.model = model_section("UNet-small", conditioning="cross_attn")
  """
  model = create_model({"name": name})
  values = {f.name: _plain(getattr(model, f.name)) for f in dataclasses.fields(model)
            if f.name not in ("parent", "name")}
  if "attention_backend" in values:
    values["attention_backend"] = "auto"  # the best kernel of the device, not the class's 'xla'
  unknown = sorted(set(fields) - set(values))
  if unknown:
    raise ConfigError(f"config.model: fields {unknown} are not fields of {name!r} "
                      f"({type(model).__name__}); its fields: {sorted(values)}")
  return ml_collections.ConfigDict({"name": name, **values, **fields})


def rename_model(section, name: str) -> ml_collections.ConfigDict:
  """The section for another model `name`: fields the config set away from the old name's
  defaults are kept (where the new family has them), the rest take the new name's values, so
  `--config.model.name=DiT-B/4` on a DiT-XL/2 config builds a DiT-B/4."""
  old = model_section(section["name"])
  new = model_section(name)
  kept = {k: v for k, v in section.items()
          if k != "name" and k in new and (k not in old or old[k] != v)}
  return model_section(name, **kept)


def vae_section(name: str = "tiny", **fields) -> ml_collections.ConfigDict:
  """config.vae of a VAE run: the preset's architecture fields and dtypes, then `fields`."""
  vae = vae_preset(name)
  return ml_collections.ConfigDict({"name": name, **vae_arch(vae), "dtype": _plain(vae.dtype),
                                    "param_dtype": _plain(vae.param_dtype), **fields})


# What each kind of evaluator (dit_jax.eval.evaluators) reads, with its defaults. Every kind has
# `every` (steps; 0: never; also at the end), `num_samples`, `batch_size` (samples per compiled
# sampler call) and `prefix` (of the logged metric names).
EVALUATORS = {
    # FD (FID with Inception), sFD, IS, precision / recall and conditional accuracy of EMA
    # samples with uniform class labels (or none), against the real images of data `split` or
    # a `reference` .npz (`dit-jax eval-ref`, ADM's), in the feature net `features`: 'data' (a
    # classifier of data.name) or 'inception:FILE' (pytorch-fid's weights).
    "samples": dict(every=1000, num_samples=1000, batch_size=250, prefix="eval/",
                    features="data", reference=None, split="test"),
    # Caption-conditioned samples of a shapes data set's `split` captions, checked exactly
    # against the captions' objects (dit_jax.eval.composition): colour, shape, object, empty
    # cells, whole images, and whole images of captions absent from the training split.
    "composition": dict(every=1000, num_samples=256, batch_size=256, prefix="eval/",
                        split="test"),
}


def evaluator_section(kind: str, **fields) -> ml_collections.ConfigDict:
  """One entry of config.evals: `kind`'s fields (EVALUATORS) with its defaults, then `fields`.

      config.evals.samples = evaluator_section("samples", every=500, num_samples=400)
  """
  if kind not in EVALUATORS:
    raise ConfigError(f"config.evals: evaluator type {kind!r} is not one of {tuple(EVALUATORS)}")
  _check_evaluator_fields("config.evals", kind, fields)
  return ml_collections.ConfigDict({"type": kind, **EVALUATORS[kind], **fields})


def _check_evaluator_fields(where: str, kind: str, fields):
  unknown = sorted(set(fields) - set(EVALUATORS[kind]) - {"type"})
  if unknown:
    raise ConfigError(f"{where}: fields {unknown} are not fields of a {kind!r} evaluator; "
                      f"its fields: {sorted(EVALUATORS[kind])}")


def base_config() -> ml_collections.ConfigDict:
  """Every field a training run reads, with defaults; config files override a few.

  Sections: model (`model_section`, models.create_model), objective (flow.make_objective:
  also the one home of DDPM's schedule, which the sampler reads), data (data.DataConfig),
  optim, train, sample (flow.make_sampler), evals (`evaluator_section`), mesh
  (parallel.MeshConfig).
  """
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = model_section("DiT-S/2", num_classes=10, learn_sigma=False)
  config.objective = ml_collections.ConfigDict(flow.objectives.CONFIG_DEFAULTS)
  config.data = ml_collections.ConfigDict(dict(
      name="digits/8", split="train", data_dir=None, image_size=None, batch_size=64, seed=0,
      shuffle=True, num_threads=2, prefetch=4, worker_count=0,
      latent_downsample=1,  # >1: the model sees VAE latents of image_size / latent_downsample
      latent_channels=4,    # channels of those latents
      latents=None,  # folder from `dit-jax extract-latents`: train on it (never runs the encoder)
      vae=None,      # VAE folder that decodes samples (default: the one the latents recorded)
      text_tokenizer=None,  # 'words:shapes' | 'bytes': batches carry tokenized captions
      text_length=32))      # tokens per caption with BOS and padding
  config.optim = ml_collections.ConfigDict(dict(
      lr=1e-3, warmup_steps=100, schedule="cosine", end_lr_factor=0.1, b1=0.9, b2=0.999,
      eps=1e-8, weight_decay=0.0, grad_clip=1.0))  # grad_clip 0: no clipping
  config.train = ml_collections.ConfigDict(dict(
      steps=2000, log_every=100, checkpoint_every=500, keep_checkpoints=3,
      sample_every=1000,  # also at the end; 0: never
      samples_per_class=8, ema_decay=0.999,  # ema_decay 0: no EMA
      ema_warmup=False,   # decay min(ema_decay, (1 + step) / (10 + step)): for short runs
      spike_factor=0.0,   # > 0: stop (before saving) when loss > factor x median of the last
      spike_window=100,   #   spike_window steps; non-finite steps always stop the run
      profile_start=0, profile_steps=0,  # jax.profiler trace of these steps -> workdir/profile
      init_from=None))  # a `dit-jax convert` folder: a fresh run fine-tunes its parameters
  config.sample = ml_collections.ConfigDict(dict(
      method="heun", steps=25, cfg_scale=2.0, shift=1.0,
      eta=0.0,  # ddim only: 0 deterministic, 1 DDPM's posterior noise
      guide_channels=0,     # guide only the first k channels (DiT's sampler: 3); 0: all
      spacing="uniform"))   # 'respaced': Improved DDPM's respacing of the chain (ddpm, ddim)
  # Evaluations during training (dit_jax.eval.evaluators): named sections of `evaluator_section`,
  # each run every `every` steps and at the end, its metrics logged as `prefix` + name.
  config.evals = ml_collections.ConfigDict()
  # Device mesh (parallel.MeshConfig): sizes of the data / fsdp / tensor axes within a slice
  # (-1: the devices that are left) and across slices (dcn_*, multi-slice TPU), and the
  # logical-axis rules: a preset in parallel.RULE_PRESETS ('dp', 'fsdp', 'fsdp_tp').
  config.mesh = ml_collections.ConfigDict(dict(
      data=-1, fsdp=1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1, rules="dp"))
  return config


def vae_config(name: str = "tiny") -> ml_collections.ConfigDict:
  """Every field a `train-vae` run reads: the data, optim, train and mesh sections of
  `base_config`, the VAE (`vae_section`) and its training (`vae_train`)."""
  config = base_config()
  del config.model, config.objective, config.sample, config.evals
  config.vae = vae_section(name)
  config.vae_train = ml_collections.ConfigDict(dict(
      reconstruction="l2",  # one of VAE_RECONSTRUCTIONS
      kl_weight=1e-6,       # LDM's weight (per-element losses, see dit_jax/vae_train.py)
      eval_split="test", eval_batches=8,
      auto_scale=True))     # exported scaling_factor = 1 / std of the latents
  return config


def _schema(config) -> ml_collections.ConfigDict:
  """The defaults `config` is checked against: base_config or vae_config, with the model
  section of config.model.name."""
  schema = vae_config() if "vae" in config else base_config()
  if "model" in config and "model" in schema:
    schema.model = model_section(config.model.name)
  if "vae" in config and config.vae.get("name"):
    schema.vae = vae_section(config.vae.name)
  for name, entry in config.get("evals", {}).items():
    schema.evals[name] = _evaluator_schema(name, entry)
  return schema


def _evaluator_schema(name: str, entry) -> ml_collections.ConfigDict:
  """The defaults of config.evals.NAME (its `type`'s); unknown types and fields name the fix."""
  where = f"config.evals.{name}"
  if not hasattr(entry, "items") or entry.get("type") not in EVALUATORS:
    raise ConfigError(f"{where} must be an evaluator section with a `type` in "
                      f"{tuple(EVALUATORS)}: set it with evaluator_section(TYPE, ...)")
  _check_evaluator_fields(where, entry.type, entry)
  return evaluator_section(entry.type)


# Loading and overrides.


def config_module(spec: str):
  """(the imported config file of `spec` 'configs/dit.py:DiT-B/4', its argument 'DiT-B/4')."""
  path, _, arg = spec.partition(":")
  if not Path(path).is_file():
    raise MissingFileError(f"config file {path!r} not found: pass --config path/to/file.py[:arg]")
  module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
  if module_spec is None or module_spec.loader is None or not path.endswith(".py"):
    raise ConfigError(f"--config {path} is not a Python config file: pass a .py file with a "
                      "get_config(arg) function, e.g. configs/quickstart.py")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module, arg


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Imports the file in `spec` ('configs/dit.py:DiT-B/4'), returns get_config(arg), validated."""
  module, arg = config_module(spec)
  return validate(module.get_config(arg) if arg else module.get_config())


def _parse_value(text: str, current):
  """Parses an override to the type of the field it replaces; ValueError says what it needs."""
  if isinstance(current, bool):
    if text.lower() not in ("true", "false", "1", "0"):
      raise InputError("expected true or false")
    return text.lower() in ("true", "1")
  if isinstance(current, int):
    try:
      value = float(text) if not text.lstrip("+-").isdigit() else int(text)
    except ValueError:
      raise InputError("expected an integer such as 64") from None
    if not (isinstance(value, int) or (math.isfinite(value) and value.is_integer())):
      raise InputError("expected an integer such as 64, not a fraction (it is not rounded)")
    return int(value)
  if isinstance(current, float):
    try:
      return float(text)  # also 1e-4, nan and inf, which validate() judges per field
    except ValueError:
      raise InputError("expected a number such as 0.001 or 1e-4") from None
  if current is None:  # untyped until set: a Python literal if it parses, else a string
    try:
      return ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return text
  if isinstance(current, str):
    return text
  try:
    return type(current)(ast.literal_eval(text))
  except (ValueError, SyntaxError, TypeError):
    raise InputError(f"expected a Python literal of type {type(current).__name__}, such as "
                     f"{current!r}") from None


def _field(config, key: str, where: str):
  """(the section holding `key` 'model.depth', the leaf name); errors name `where`."""
  *parents, leaf = key.split(".")
  node = config
  for part in parents:
    if part not in node:
      raise ConfigError(f"{where}: config has no section {part!r}")
    node = node[part]
  if leaf not in node:
    raise ConfigError(f"{where}: config has no field {leaf!r}; fields here: "
                      f"{sorted(node.keys())}")
  return node, leaf


def _assign(config, node, key: str, leaf: str, value):
  if key == "model.name" and value != node[leaf]:
    config.model = rename_model(config.model, value)
  else:
    node[leaf] = value


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]):
  """Applies ['model.depth=4', ...] in place and validates the result; unknown keys are an
  error naming the key. A new model.name re-bases the model section (`rename_model`)."""
  for item in overrides:
    key, sep, text = item.partition("=")
    if not sep:
      raise ConfigError(f"override {item!r} must look like --config.section.field=value")
    node, leaf = _field(config, key, f"--config.{key}")
    try:
      value = _parse_value(text, node[leaf])
    except ValueError as e:
      raise ConfigError(f"--config.{key}={text!r}: {e}") from None
    _assign(config, node, key, leaf, value)
  return validate(config)


def set_fields(config: ml_collections.ConfigDict, fields: dict, where: str = "field"):
  """Sets {'model.depth': 4, 'model': model_section(...), ...} (Python values, a sweep's
  override sets) in place and validates the result; `where` names them in errors."""
  for key, value in fields.items():
    node, leaf = _field(config, key, f"{where} {key!r}")
    if isinstance(value, dict) and not isinstance(value, ml_collections.ConfigDict):
      value = ml_collections.ConfigDict(value)
    try:
      _assign(config, node, key, leaf, value)
    except TypeError as e:  # ConfigDict refuses a value of another type than the field's
      raise ConfigError(f"{where} {key}={value!r}: {e}") from None
  try:
    return validate(config)
  except ConfigError as e:
    raise ConfigError(f"{where} {sorted(fields)}: {e}") from None


# Validation.

_UNTYPED = ("mesh.rules",)  # a preset name or a tuple of (logical, mesh axis) pairs
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
    ("evals.*.every", *_at_least(0, " (0: never)")),
    ("evals.*.num_samples", *_at_least(2, " (statistics need two samples; 10 for the IS)")),
    ("evals.*.features", lambda v: v == "data" or v.startswith("inception:"),
     "'data' (a classifier of data.name) or 'inception:FILE' (pytorch-fid's weights)"),
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


def model_input_shape(data_config) -> tuple[int, int, int]:
  """(H, W, C) the model sees: VAE latents when data.latent_downsample > 1, else the images."""
  factor = data_config.latent_downsample
  if factor > 1:
    side = data_config.image_size // factor
    return side, side, data_config.latent_channels
  from dit_jax import data  # imports TFDS: only when the shape comes from a data set
  return data.image_shape(data_config)
