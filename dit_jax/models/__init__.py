"""Backbones built from `dit_jax.nn`, created by name from a config; every denoiser implements
the model contract of `dit_jax.models.contract` (`Denoiser`)."""
import dataclasses

import jax.numpy as jnp

from dit_jax.errors import InputError
from dit_jax.models.contract import (KEYS, CondSpec, Denoiser, check_denoiser, class_count,
                                     cond_spec, example_condition, example_inputs)
from dit_jax.models.dit import DiT, dit
from dit_jax.models.mmdit import MMDiT, NAMES as MMDIT_NAMES, TextDiT, mmdit
from dit_jax.models.unet import UNet, unet

_TUPLE_FIELDS = ("rope_axes_dims", "cond_image_shape", "channel_mult", "attention_levels")


def _family(name):
  """(module class, preset factory) for a model name, or None."""
  if name == "DiT" or str(name).startswith("DiT-"):
    return DiT, dit
  if str(name).startswith("UNet"):
    return UNet, unet
  if name in MMDIT_NAMES:
    return (TextDiT if name == "TextDiT" else MMDiT), mmdit
  return None


def create_model(model_config):
  """Builds a model from `config.model`: a `name` plus fields of that model.

  Names: a DiT preset ('DiT-XL/2') or 'DiT' with explicit sizes; a U-Net preset ('UNet-small',
  'UNet-ADM-256', 'UNet-SD-latent') or 'UNet'; an MM-DiT preset ('FLUX.1-dev', 'SD3-medium',
  ...), 'MMDiT' or 'TextDiT'. dtypes may be strings ('bfloat16'); JSON lists become tuples.
  """
  fields = dict(model_config)
  name = fields.pop("name", None)
  family = _family(name) if name else None
  if family is None:
    raise InputError(f"config.model.name={name!r} is not a known model: use a DiT preset such "
                     "as 'DiT-XL/2' (sizes S, B, L, XL; patch 2, 4, 8) or 'DiT' with explicit "
                     "patch_size, hidden_size, depth and num_heads; a U-Net ('UNet-small', "
                     f"'UNet'); or one of {MMDIT_NAMES}")
  cls, factory = family
  known = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise InputError(f"config.model has fields {unknown} that {cls.__name__} does not take; "
                     f"known fields: {sorted(known)}")
  for key in ("dtype", "param_dtype"):
    if key in fields:
      fields[key] = jnp.dtype(fields[key])
  for key in _TUPLE_FIELDS:
    if isinstance(fields.get(key), list):
      fields[key] = tuple(fields[key])
  if name in ("DiT", "UNet"):
    return cls(**fields)
  return factory(name, **fields)


def model_fn(model, params, *, train: bool = False, rng=None):
  """The (x, t, cond) -> prediction function that objectives and samplers see."""
  rngs = {"dropout": rng} if rng is not None else None
  return lambda x, t, cond: model.apply({"params": params}, x, t, cond, train=train, rngs=rngs)
