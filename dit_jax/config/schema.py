"""The one config schema: every field a run reads with its default (`base_config`,
`model_section`, `vae_config`, the evaluator sections of `EVALUATORS`), and the input shape a
config's model sees."""
import dataclasses

import ml_collections
import numpy as np

from dit_jax import flow
from dit_jax.errors import InputError
from dit_jax.models import create_model
from dit_jax.models.vae import vae_arch, vae_preset

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
# `every` (steps; 0: never; also at the end), `at_steps` (more steps to run at, e.g. where a
# sweep's models reach equal training compute; also with every=0), `num_samples`, `batch_size`
# (samples per compiled call) and `prefix` (of the logged metric names).
EVALUATORS = {
    # FD (FID with Inception), sFD, IS, precision / recall and conditional accuracy of EMA
    # samples with uniform class labels (or none), against the real images of data `split` or
    # a `reference` .npz (`dit-jax eval-ref`, ADM's), in the feature net `features`: 'data' (a
    # classifier of data.name) or 'inception:FILE' (pytorch-fid's weights).
    "samples": dict(every=1000, at_steps=(), num_samples=1000, batch_size=250, prefix="eval/",
                    features="data", reference=None, split="test"),
    # Caption-conditioned samples of a shapes data set's `split` captions, checked exactly
    # against the captions' objects (dit_jax.eval.composition): colour, shape, object, empty
    # cells, whole images, and whole images of captions absent from the training split.
    "composition": dict(every=1000, at_steps=(), num_samples=256, batch_size=256,
                        prefix="eval/", split="test"),
    # The run's own objective on the first num_samples examples of `split` at each time of
    # `t_values`, with noise fixed by `seed` (the same for every run: paired comparisons), for
    # the EMA parameters and, with `raw`, the trained ones (dit_jax.eval.loss_by_t): loss_t=T,
    # loss_raw_t=T. `latents`: a latent folder of the held-out split for latent runs (default
    # data.latents, the training split's).
    "loss_by_t": dict(every=100, at_steps=(), num_samples=256, batch_size=256, prefix="eval/",
                      split="test", t_values=(0.05, 0.2, 0.5, 0.8, 0.95), raw=True, seed=0,
                      latents=None),
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
      init_from=None,  # a `dit-jax convert` folder: a fresh run fine-tunes its parameters
      # JAX's persistent compilation cache (engine.compile_cache): None <workdir>/compilation_
      # cache; '' none; or a folder, local or gs://, that runs share (a sweep's runs do).
      compilation_cache_dir=None,
      compilation_cache_min_compile_s=1.0,  # programs that compile faster are not cached
      stop_check_every=10))  # multi-process: steps between agreements on a Ctrl-C (SIGTERM:
                             # JAX's preemption service, checked every step without one)
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


def model_input_shape(data_config) -> tuple[int, int, int]:
  """(H, W, C) the model sees: VAE latents when data.latent_downsample > 1, else the images."""
  factor = data_config.latent_downsample
  if factor > 1:
    side = data_config.image_size // factor
    return side, side, data_config.latent_channels
  from dit_jax import data  # imports TFDS: only when the shape comes from a data set
  return data.image_shape(data_config)
