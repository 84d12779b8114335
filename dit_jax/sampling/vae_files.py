"""A VAE on disk. `train-vae` writes our own folder: `dit_jax_vae.json` (the AutoencoderKL
fields, `models.vae.vae_arch`) and `params.safetensors` (float32, keys are the flax parameter
paths `encoder/conv_in/kernel`). `--vae` takes that folder, a `train-vae` workdir holding it in
`vae/`, or a diffusers AutoencoderKL folder, read by the importer in `convert.vae`.
"""
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from safetensors.numpy import load, save

from dit_jax import paths
from dit_jax.models.vae import AutoencoderKL, vae_arch
from dit_jax.state_files import read_json, write_atomic, write_json

CONFIG = "dit_jax_vae.json"
WEIGHTS = "params.safetensors"


def native_dir(path: str | Path) -> Path | None:
  """`path` or `path/vae` when it holds our format, else None."""
  for folder in (paths.as_path(path), paths.as_path(path) / "vae"):
    if (folder / CONFIG).is_file() and (folder / WEIGHTS).is_file():
      return folder
  return None


def save_vae(path: str | Path, vae: AutoencoderKL, params):
  """Writes the VAE's fields and float32 parameters to folder `path`."""
  folder = paths.as_path(path)
  flat = traverse_util.flatten_dict(params, sep="/")
  write_atomic(folder / WEIGHTS, save({k: np.ascontiguousarray(v, np.float32)  # local or gs://
                                       for k, v in flat.items()}))
  write_json(folder / CONFIG, vae_arch(vae), indent=2)


def load_vae(path: str | Path, dtype=None) -> tuple[AutoencoderKL, dict]:
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
  params = traverse_util.unflatten_dict(load((folder / WEIGHTS).read_bytes()), sep="/")
  return vae, params


def vae_dir(path: str | Path) -> Path:
  """The folder a VAE is read from (ours or diffusers'), for recording where latents came
  from; raises FileNotFoundError naming what --vae may be."""
  folder = native_dir(path)
  if folder is not None:
    return folder
  from dit_jax.convert.vae import resolve_vae_dir  # deferred: as in load_vae
  return resolve_vae_dir(path)
