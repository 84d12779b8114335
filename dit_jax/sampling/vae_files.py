"""A VAE on disk. `train-vae` writes our own folder: `dit_jax_vae.json` (the AutoencoderKL
fields, `models.vae.vae_arch`) and `params.safetensors` (float32, keys are the flax parameter
paths `encoder/conv_in/kernel`). `--vae` takes that folder, a `train-vae` workdir holding it in
`vae/`, or a diffusers AutoencoderKL folder, read by the importer in `convert.vae`. Folders
may be local or in a bucket (gs://).
"""
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import traverse_util
from safetensors import SafetensorError

from dit_jax import paths
from dit_jax.errors import InputError
from dit_jax.models.vae import AutoencoderKL, vae_arch
from dit_jax.state_files import read_bytes, read_json, write_atomic, write_json

CONFIG = "dit_jax_vae.json"
WEIGHTS = "params.safetensors"


def native_dir(path):
  """`path` or `path/vae` when it holds our format, else None."""
  for folder in (paths.as_path(path), paths.as_path(path) / "vae"):
    try:
      if {CONFIG, WEIGHTS} <= set(paths.list_names(folder)):
        return folder
    except NotADirectoryError:
      pass
  return None


def save_vae(path, vae: AutoencoderKL, params):
  """Writes the VAE's fields and float32 parameters to folder `path` (weights first: the
  folder is a VAE only once its config is there)."""
  folder = paths.as_path(path)
  flat = traverse_util.flatten_dict(params, sep="/")
  write_atomic(folder / WEIGHTS, safetensors.numpy.save(
      {k: np.ascontiguousarray(v, np.float32) for k, v in flat.items()}))
  write_json(folder / CONFIG, vae_arch(vae), indent=2)


def load_vae(path, dtype=None) -> tuple[AutoencoderKL, dict]:
  """(AutoencoderKL, params) from our folder, or from a diffusers folder via the importer."""
  folder = native_dir(path)
  if folder is None:
    # deferred: the third-party importer loads only for a diffusers folder (training never)
    from dit_jax.convert.vae import load_vae as import_diffusers_vae
    return import_diffusers_vae(path, dtype)
  arch = read_json(folder / CONFIG, "the VAE's architecture",
                   fix="save the VAE again (`dit-jax train-vae` or `dit-jax convert`)")
  arch["block_out_channels"] = tuple(arch["block_out_channels"])
  vae = AutoencoderKL(**arch, **({"dtype": jnp.dtype(dtype)} if dtype else {}))
  try:
    flat = safetensors.numpy.load(read_bytes(folder / WEIGHTS))
  except SafetensorError as e:  # cut short, damaged
    raise InputError(f"{folder / WEIGHTS} is not a readable .safetensors file ({e}): save the "
                     "VAE again (`dit-jax train-vae` or `dit-jax convert`)") from None
  params = traverse_util.unflatten_dict(flat, sep="/")
  return vae, params


def vae_dir(path):
  """The folder a VAE is read from (ours or diffusers'), for recording where latents came
  from; raises FileNotFoundError naming what --vae may be."""
  folder = native_dir(path)
  if folder is not None:
    return folder
  from dit_jax.convert.vae import resolve_vae_dir  # deferred: as in load_vae
  return resolve_vae_dir(path)
