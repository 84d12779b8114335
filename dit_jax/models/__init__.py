"""Backbones built from `dit_jax.nn`, created by name from a config."""
import dataclasses

import jax.numpy as jnp

from dit_jax.models.dit import DiT, dit
from dit_jax.models.mmdit import NAMES as MMDIT_NAMES
from dit_jax.models.mmdit import MMDiT, TextDiT, mmdit
from dit_jax.models.unet import UNet, unet


def create_model(model_config) -> DiT:
  """Builds a model from `config.model`: a `name` ('DiT-XL/2', or 'DiT' for a custom size
  given entirely by the fields) plus fields of that model. dtypes may be strings ('bfloat16').
  """
  fields = dict(model_config)
  name = fields.pop("name", None)
  if name and str(name).startswith("UNet"):
    return create_unet(name, fields)
  if name in MMDIT_NAMES:
    return _create_text_model(name, fields)
  if not name or not str(name).startswith("DiT"):
    raise ValueError(f"config.model.name={name!r} is not a known model: use a DiT preset such "
                     "as 'DiT-XL/2' (sizes S, B, L, XL; patch 2, 4, 8) or 'DiT' with explicit "
                     "patch_size, hidden_size, depth and num_heads")
  known = {f.name for f in dataclasses.fields(DiT)} - {"parent", "name"}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(f"config.model has fields {unknown} that DiT does not take; known fields: "
                     f"{sorted(known)}")
  for key in ("dtype", "param_dtype"):
    if key in fields:
      fields[key] = jnp.dtype(fields[key])
  return DiT(**fields) if name == "DiT" else dit(name, **fields)


def create_unet(name: str, fields: dict) -> UNet:
  """'UNet' (every field explicit) or a preset ('UNet-small', 'UNet-ADM-256', 'UNet-SD-latent')
  with fields overridden; lists become tuples (JSON configs store tuples as lists)."""
  known = {f.name for f in dataclasses.fields(UNet)} - {"parent", "name"}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(f"config.model has fields {unknown} that UNet does not take; known "
                     f"fields: {sorted(known)}")
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
  for key in ("dtype", "param_dtype"):
    if key in fields:
      fields[key] = jnp.dtype(fields[key])
  return UNet(**fields) if name == "UNet" else unet(name, **fields)


def _create_text_model(name: str, fields: dict):
  """MM-DiT presets ('FLUX.1-dev', 'SD3-medium', ...), 'MMDiT' or 'TextDiT' from the fields."""
  cls = TextDiT if name == "TextDiT" else MMDiT
  known = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(f"config.model has fields {unknown} that {cls.__name__} does not take; "
                     f"known fields: {sorted(known)}")
  for key in ("dtype", "param_dtype"):
    if key in fields:
      fields[key] = jnp.dtype(fields[key])
  for key in ("rope_axes_dims", "cond_image_shape"):
    if key in fields:
      fields[key] = tuple(fields[key])
  return mmdit(name, **fields)


def model_fn(model, params, *, train: bool = False, rng=None):
  """The (x, t, cond) -> prediction function that objectives and samplers see."""
  rngs = {"dropout": rng} if rng is not None else None
  return lambda x, t, cond: model.apply({"params": params}, x, t, cond, train=train, rngs=rngs)
