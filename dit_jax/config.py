"""Loading ml-collections configs: `path/to/config.py[:arg]` plus `--config.a.b=value` overrides."""
import ast
import importlib.util
from pathlib import Path

import ml_collections


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Imports the file in `spec` ('configs/dit.py:DiT-B/4') and returns get_config(arg)."""
  path, _, arg = spec.partition(":")
  if not Path(path).is_file():
    raise FileNotFoundError(f"config file {path!r} not found: pass --config path/to/file.py[:arg]")
  module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _parse_value(text: str, current):
  """Parses an override to the type of the field it replaces."""
  if isinstance(current, bool):
    if text.lower() not in ("true", "false", "1", "0"):
      raise ValueError(f"expected true/false, got {text!r}")
    return text.lower() in ("true", "1")
  if isinstance(current, (int, float)):
    return type(current)(ast.literal_eval(text))
  if current is None:  # untyped until set: a Python literal if it parses, else a string
    try:
      return ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return text
  if isinstance(current, str):
    return text
  return type(current)(ast.literal_eval(text))


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]):
  """Applies ['model.depth=4', ...] in place; unknown keys are an error naming the key."""
  for item in overrides:
    key, sep, text = item.partition("=")
    if not sep:
      raise ValueError(f"override {item!r} must look like --config.section.field=value")
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      if part not in node:
        raise ValueError(f"--config.{key}: config has no section {part!r}")
      node = node[part]
    if leaf not in node:
      raise ValueError(f"--config.{key}: config has no field {leaf!r}; fields here: "
                     f"{sorted(node.keys())}")
    try:
      node[leaf] = _parse_value(text, node[leaf])
    except (ValueError, SyntaxError) as e:
      raise ValueError(f"--config.{key}={text!r}: {e}") from None
  return config


def base_config() -> ml_collections.ConfigDict:
  """Every field a training run reads, with defaults; config files override a few.

  Sections: model (see models.create_model), objective (flow.make_objective), data
  (data.DataConfig), optim, train, sample (flow.make_sampler), mesh
  (parallel.MeshConfig).
  """
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = ml_collections.ConfigDict(dict(
      name="DiT-S/2", num_classes=10, class_dropout_prob=0.1, learn_sigma=False,
      conditioning="adaln_zero", attention_backend="auto", dtype="float32",
      param_dtype="float32", scan_layers=False, remat_policy="none"))
  config.objective = ml_collections.ConfigDict(dict(
      kind="flow", t_dist="logit_normal", logit_mean=0.0, logit_std=1.0, shift=1.0))
  config.data = ml_collections.ConfigDict(dict(
      name="digits/8", split="train", data_dir=None, image_size=None, batch_size=64, seed=0,
      shuffle=True, num_threads=2, prefetch=4,
      latent_downsample=1,  # >1: the model sees VAE latents of image_size / latent_downsample
      latents=None,  # folder from `dit-jax extract-latents`: train on it (never runs the encoder)
      vae=None))     # VAE folder that decodes samples (default: the one the latents recorded)
  config.optim = ml_collections.ConfigDict(dict(
      lr=1e-3, warmup_steps=100, schedule="cosine", end_lr_factor=0.1, b1=0.9, b2=0.999,
      eps=1e-8, weight_decay=0.0, grad_clip=1.0))
  config.train = ml_collections.ConfigDict(dict(
      steps=2000, log_every=100, checkpoint_every=500, keep_checkpoints=3,
      sample_every=1000,  # also at the end; 0: never
      samples_per_class=8, ema_decay=0.999,
      ema_warmup=False,   # decay min(ema_decay, (1 + step) / (10 + step)): for short runs
      spike_factor=0.0,   # > 0: stop (before saving) when loss > factor x median of the last
      spike_window=100,   #   spike_window steps; non-finite steps always stop the run
      profile_start=0, profile_steps=0))  # jax.profiler trace of these steps -> workdir/profile
  config.sample = ml_collections.ConfigDict(dict(method="heun", steps=25, cfg_scale=2.0,
                                                 shift=1.0))
  # Device mesh (parallel.MeshConfig): sizes of the data / fsdp / tensor axes within a slice
  # (-1: the devices that are left) and across slices (dcn_*, multi-slice TPU), and the
  # logical-axis rules: a preset in parallel.RULE_PRESETS ('dp', 'fsdp', 'fsdp_tp').
  config.mesh = ml_collections.ConfigDict(dict(
      data=-1, fsdp=1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1, rules="dp"))
  return config


def model_input_shape(data_config) -> tuple[int, int, int]:
  """(H, W, C) the model sees: VAE latents when data.latent_downsample > 1, else the images."""
  factor = data_config.get("latent_downsample", 1)
  if factor > 1:
    side = data_config.image_size // factor
    return side, side, data_config.latent_channels
  from dit_jax import data  # imports TFDS: only when the shape comes from a data set
  return data.image_shape(data_config)


# TEMPORARY (lead): replaced by the flow branch's schema version at merge.
RESUMABLE_FIELDS = ("train.steps", "train.log_every", "train.checkpoint_every",
                    "train.keep_checkpoints", "train.sample_every", "train.samples_per_class",
                    "sample", "mesh", "data.num_threads", "data.prefetch", "data.data_dir",
                    "data.vae", "model.attention_backend", "model.remat_policy",
                    "train.profile_start", "train.profile_steps", "train.spike_factor")


def _leaves(tree, prefix=""):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _leaves(v, f"{prefix}{k}.")
  else:
    yield prefix[:-1], tree


def meaning_changes(saved: dict, new: dict) -> list[tuple[str, object, object]]:
  old, cur = dict(_leaves(saved)), dict(_leaves(new))
  may = lambda f: any(f == r or f.startswith(r + ".") for r in RESUMABLE_FIELDS)
  return [(f, old.get(f), cur.get(f)) for f in sorted(set(old) | set(cur))
          if not may(f) and old.get(f) != cur.get(f)]
