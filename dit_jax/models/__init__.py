"""Backbones built from `dit_jax.nn`, created by name from a config."""
import dataclasses

import jax.numpy as jnp

from dit_jax.models.dit import DiT, dit


def create_model(model_config) -> DiT:
  """Builds a model from `config.model`: a `name` ('DiT-XL/2', or 'DiT' for a custom size
  given entirely by the fields) plus fields of that model. dtypes may be strings ('bfloat16').
  """
  fields = dict(model_config)
  name = fields.pop("name", None)
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


def model_fn(model, params, *, train: bool = False, rng=None):
  """The (x, t, cond) -> prediction function that objectives and samplers see."""
  rngs = {"dropout": rng} if rng is not None else None
  return lambda x, t, cond: model.apply({"params": params}, x, t, cond, train=train, rngs=rngs)
