"""VAE weights in the diffusers `AutoencoderKL` layout: import, export, and checks.

A VAE directory is what diffusers writes with `save_pretrained` (also the `vae/` folder of a
pipeline): `config.json` plus `diffusion_pytorch_model.safetensors`. `dit-jax train-vae` writes
the same layout, so a trained VAE and a published one load the same way:

    vae, params = load_vae("path/to/sd-vae-ft-mse")        # or a pipeline dir with vae/
    save_vae("out/vae", vae, params)

Names map by renaming only (see dit_jax/models/vae.py): the flax path `a.foo_N.b` is the
diffusers key `a.foo.N.b`; flax `kernel` is diffusers `weight` (conv HWIO <-> OIHW, dense
(in, out) <-> (out, in)) and GroupNorm `scale` is `weight`. Older diffusers files name the
attention projections query/key/value/proj_attn; those are accepted too.
"""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from dit_jax import paths
from dit_jax.convert.io import flat_paths, load_tensors, refuse_mismatch, save_tensors
from dit_jax.errors import InputError, MissingFileError
from dit_jax.models.vae import AutoencoderKL
from dit_jax.state_files import read_json, write_json

WEIGHTS = "diffusion_pytorch_model.safetensors"
LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def flax_path_to_key(path: tuple[str, ...]) -> str:
  """('encoder', 'down_blocks_0', 'resnets_1', 'conv1', 'kernel') -> 'encoder.down_blocks.0.
  resnets.1.conv1.weight'."""
  *modules, leaf = path
  parts = [re.sub(r"_(\d+)$", r".\1", m) for m in modules]
  return ".".join(parts + ["bias" if leaf == "bias" else "weight"])


def to_diffusers_array(leaf: str, value: np.ndarray) -> np.ndarray:
  value = np.asarray(value)
  if leaf == "kernel" and value.ndim == 4:
    return value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
  if leaf == "kernel" and value.ndim == 2:
    return value.T
  return value


def from_diffusers_array(leaf: str, value: np.ndarray, ndim: int) -> np.ndarray:
  if leaf == "kernel" and ndim == 4:
    return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  if leaf == "kernel" and ndim == 2:
    if value.ndim == 4:  # LDM-era attention stored as 1x1 convs
      value = value[:, :, 0, 0]
    return value.T
  return value


def export_params(params) -> dict[str, np.ndarray]:
  """Flax VAE params -> {diffusers key: array in diffusers layout}."""
  return {flax_path_to_key(path): to_diffusers_array(path[-1], value)
          for path, value in flat_paths(nn.unbox(params)).items()}


def abstract_params(vae: AutoencoderKL, image_size: int | None = None):
  """Shapes of the VAE's params, without memory."""
  side = image_size or 8 * vae.downsample
  x = jax.ShapeDtypeStruct((1, side, side, vae.in_channels), jnp.float32)
  return nn.unbox(jax.eval_shape(lambda x: vae.init(jax.random.PRNGKey(0), x), x)["params"])


def diffusers_shapes(vae: AutoencoderKL) -> dict[str, tuple[int, ...]]:
  """{diffusers key: PyTorch-layout shape} that `vae` expects."""
  return {flax_path_to_key(path): _torch_shape(path[-1], value.shape)
          for path, value in flat_paths(abstract_params(vae)).items()}


def _torch_shape(leaf: str, shape) -> tuple[int, ...]:
  return to_diffusers_array(leaf, np.zeros(shape, np.int8)).shape


def _normalise_key(key: str) -> str:
  for old, new in LEGACY_ATTENTION.items():
    key = re.sub(rf"\.attentions\.0\.{old}\.", f".attentions.0.{new}.", key)
  return key.removeprefix("vae.")


def import_params(state_dict: dict[str, np.ndarray], vae: AutoencoderKL, dtype=None):
  """{diffusers key: array} -> flax params of `vae`.

  Raises ValueError listing every missing key, unexpected key and shape mismatch at once.
  """
  state = {_normalise_key(k): np.asarray(v) for k, v in state_dict.items()}
  expected = flat_paths(abstract_params(vae))
  keys = {flax_path_to_key(path): path for path in expected}
  converted, mismatched = {}, []
  for key in sorted(set(keys) & set(state)):
    path = keys[key]
    want = expected[path]
    value = from_diffusers_array(path[-1], state[key], len(want.shape))
    if value.shape != tuple(want.shape):
      theirs = _torch_shape(path[-1], want.shape)
      mismatched.append(f"{key}: file {state[key].shape}, model {theirs}")
      continue
    converted[path] = value.astype(dtype or want.dtype)
  refuse_mismatch(f"VAE weights do not match the architecture {arch_summary(vae)}:", {
      "missing": sorted(set(keys) - set(state)), "unexpected": sorted(set(state) - set(keys)),
      "shape mismatch": mismatched},
      "  check the VAE config (config.json: block_out_channels, layers_per_block, "
      "latent_channels, use_quant_conv) against the weight file")
  return traverse_util.unflatten_dict({path: jnp.asarray(v) for path, v in converted.items()})


def arch_summary(vae: AutoencoderKL) -> str:
  return (f"(block_out_channels={tuple(vae.block_out_channels)}, layers_per_block="
          f"{vae.layers_per_block}, latent_channels={vae.latent_channels}, use_quant_conv="
          f"{vae.use_quant_conv}, use_post_quant_conv={vae.use_post_quant_conv})")


def diffusers_config(vae: AutoencoderKL) -> dict:
  """The diffusers AutoencoderKL config.json of `vae`."""
  n = len(vae.block_out_channels)
  return {
      "_class_name": "AutoencoderKL", "in_channels": vae.in_channels,
      "out_channels": vae.out_channels, "down_block_types": ["DownEncoderBlock2D"] * n,
      "up_block_types": ["UpDecoderBlock2D"] * n,
      "block_out_channels": list(vae.block_out_channels),
      "layers_per_block": vae.layers_per_block, "act_fn": "silu",
      "latent_channels": vae.latent_channels, "norm_num_groups": vae.norm_num_groups,
      "scaling_factor": vae.scaling_factor, "shift_factor": vae.shift_factor or None,
      "use_quant_conv": vae.use_quant_conv, "use_post_quant_conv": vae.use_post_quant_conv,
      "mid_block_add_attention": vae.mid_block_attention}


def vae_from_config(config: dict, **overrides) -> AutoencoderKL:
  """An AutoencoderKL from a diffusers config.json dict; other architectures are refused."""
  n = len(config.get("block_out_channels", ()))
  for field, block in (("down_block_types", "DownEncoderBlock2D"),
                       ("up_block_types", "UpDecoderBlock2D")):
    types = config.get(field, [block] * n)
    if any(t != block for t in types):
      raise InputError(f"VAE config {field}={types}: only {block} blocks are supported")
  if config.get("act_fn", "silu") != "silu":
    raise InputError(f"VAE config act_fn={config['act_fn']!r}: only 'silu' is supported")
  if config.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
    raise InputError(f"VAE config _class_name={config['_class_name']!r}: only AutoencoderKL")
  fields = dict(
      in_channels=config.get("in_channels", 3), out_channels=config.get("out_channels", 3),
      block_out_channels=tuple(config.get("block_out_channels", (64,))),
      layers_per_block=config.get("layers_per_block", 1),
      latent_channels=config.get("latent_channels", 4),
      norm_num_groups=config.get("norm_num_groups", 32),
      scaling_factor=float(config.get("scaling_factor", 0.18215)),
      shift_factor=float(config.get("shift_factor") or 0.0),
      use_quant_conv=bool(config.get("use_quant_conv", True)),
      use_post_quant_conv=bool(config.get("use_post_quant_conv", True)),
      mid_block_attention=bool(config.get("mid_block_add_attention", True)))
  vae = AutoencoderKL(**{**fields, **overrides})
  vae.check_config()
  return vae


def resolve_vae_dir(path):
  """The folder holding config.json: `path`, or its `vae/` subfolder (a pipeline folder or a
  `train-vae` workdir); local or gs://."""
  path = paths.as_path(path)
  for candidate in (path, path / "vae"):
    if _weights_file(candidate, "config.json"):
      return candidate
  raise MissingFileError(
      f"--vae {path}: no VAE there. Expected a diffusers AutoencoderKL folder (config.json + "
      f"{WEIGHTS}), a pipeline folder with vae/, or a `dit-jax train-vae` workdir")


def _weights_file(folder, *also: str):
  """The weight file in `folder` (with every file of `also` beside it), or None."""
  try:
    present = set(paths.list_names(folder))
  except NotADirectoryError:
    return None
  if not set(also) <= present:
    return None
  for name in (WEIGHTS, "diffusion_pytorch_model.bin", "diffusion_pytorch_model.npz"):
    if name in present:
      return folder / name
  return None


def load_vae(path, dtype=None) -> tuple[AutoencoderKL, dict]:
  """(AutoencoderKL, params) from a diffusers-layout VAE folder (see `resolve_vae_dir`)."""
  folder = resolve_vae_dir(path)
  config = read_json(folder / "config.json", "a diffusers VAE's config",
                     fix="copy the folder again from its source")
  vae = vae_from_config(config, **({"dtype": jnp.dtype(dtype)} if dtype else {}))
  return vae, import_params(load_tensors(_weights_file(folder)), vae)


def save_vae(path, vae: AutoencoderKL, params):
  """Writes config.json + diffusion_pytorch_model.safetensors (float32) to folder `path`."""
  folder = paths.as_path(path)  # created by save_tensors
  tensors = {k: np.asarray(v, np.float32) for k, v in export_params(params).items()}
  save_tensors(folder / WEIGHTS, tensors)
  write_json(folder / "config.json", diffusers_config(vae), indent=2)
