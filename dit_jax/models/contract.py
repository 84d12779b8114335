"""The one model contract: what every denoiser declares, so that the engine, samplers, `flops`,
`bench` and `aot` need no `isinstance` on model families.

    spec = model.condition_spec                   # {'label': CondSpec((), int32, 'class id ...')}
    x, t, cond = example_inputs(model, (32, 32, 4), batch=2)          # ShapeDtypeStructs
    out = model.apply(params, x, t, cond)                             # like x, C' channels
    model.null_condition(cond)                                        # the guidance branch
    model.forward_flops(32, 32, 4)                                    # {component: multiply-adds}

A condition key means ONE thing in every model (`KEYS`): a spec entry is built with `cond_spec`,
which takes the dtype and meaning from that table, so two families cannot disagree.

Time: models take t in [0, 1] (0 noise, 1 data). A model whose time embedding was trained on
the integer DDPM step (a converted published DiT) declares `time_input='ddpm_step'` and maps
t -> step itself with `model_time`, so it samples and fine-tunes like any other model.

Token ids (`text_tokens`): 0 is padding, 1 the BOS every caption starts with, so the empty
caption (the unconditional branch of guidance) is BOS then padding.
"""
import dataclasses
from typing import Mapping, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.errors import InputError

PAD, BOS = 0, 1  # token ids of `text_tokens` (see the module docstring)
TIME_INPUTS = ("unit", "ddpm_step")

# key -> (dtype, meaning). Shapes are per model (without the batch axis).
KEYS = {
    "label": (np.int32, "class id in [0, num_classes); num_classes is the null class"),
    "text_tokens": (np.int32, "caption token ids for a trained text encoder (BOS first, 0 pad)"),
    "text_mask": (np.bool_, "True where a text token (of text_tokens or text) is valid"),
    "text": (np.float32, "per-token features of a frozen text encoder (T5, CLIP), precomputed"),
    "pooled": (np.float32, "pooled caption vector of a frozen encoder (CLIP), precomputed"),
    "guidance": (np.float32, "guidance scale fed to a guidance-distilled model (FLUX.1-dev)"),
    "cond_image": (np.float32, "conditioning image (latents) joining the image tokens"),
}


@dataclasses.dataclass(frozen=True)
class CondSpec:
  """One condition input: shape without the batch axis, dtype, one-line meaning."""
  shape: tuple[int, ...]
  dtype: np.dtype
  meaning: str


def cond_spec(key: str, shape: tuple[int, ...] = ()) -> CondSpec:
  """The spec of condition `key` with this model's `shape`; dtype and meaning from `KEYS`."""
  if key not in KEYS:
    raise InputError(f"condition key {key!r} is not one of {tuple(KEYS)}: add it to "
                     "dit_jax.models.contract.KEYS with its dtype and meaning")
  dtype, meaning = KEYS[key]
  return CondSpec(tuple(int(s) for s in shape), np.dtype(dtype), meaning)


@runtime_checkable
class Denoiser(Protocol):
  """What every denoiser (DiT, UNet, MMDiT, TextDiT) implements, besides being a linen Module
  called as `model.apply(params, x_BHWC, t_B, cond, train=...)`."""
  time_input: str  # one of TIME_INPUTS

  @property
  def condition_spec(self) -> Mapping[str, CondSpec]:
    """The keys of `cond` (and of a data batch) this model reads; empty: unconditional."""

  @property
  def condition_keys(self) -> tuple[str, ...]:
    """tuple(condition_spec)."""

  def null_condition(self, cond: dict | None) -> dict | None:
    """The unconditional `cond` for classifier-free guidance (None stays None)."""

  def output_channels(self, channels: int) -> int:
    """Channels of the output for an input of `channels` (2C when variance is learned)."""

  def forward_flops(self, height: int, width: int, channels: int) -> dict[str, int]:
    """Forward multiply-adds of one example per component (the DiT paper's convention)."""

  def param_counts(self, height: int, width: int, channels: int) -> dict[str, int] | None:
    """Parameters per component where the family has a closed form, else None (then count
    them with jax.eval_shape)."""

  def attention_shapes(self, height: int, width: int, channels: int
                       ) -> tuple[tuple[int, int], ...]:
    """(head width, scores per example and head T * S) of each distinct self- or joint
    attention of the image tokens, widest scores first: what picks an 'auto' attention
    kernel (`aot` reports it)."""


class DerivedContract:
  """The contract members every family derives the same way from its own fields; a denoiser
  class lists it before nn.Module: `class DiT(DerivedContract, nn.Module)`."""

  @property
  def condition_keys(self) -> tuple[str, ...]:
    return tuple(self.condition_spec)

  def output_channels(self, channels: int) -> int:
    return 2 * channels if self.learn_sigma else channels


def check_options(model, *fields: tuple[str, tuple]) -> None:
  """Raises ValueError naming the first of the (field, options) whose value is not an option."""
  for field, options in fields:
    if getattr(model, field) not in options:
      raise InputError(f"{field}={getattr(model, field)!r} is not one of {options}")


def check_denoiser(model) -> None:
  """Raises TypeError naming what `model` lacks of the contract, ValueError for a bad field."""
  missing = [name for name in ("time_input", "condition_spec", "condition_keys",
                               "null_condition", "output_channels", "forward_flops",
                               "param_counts", "attention_shapes")
             if not hasattr(model, name)]
  if missing:
    raise TypeError(f"{type(model).__name__} does not implement the model contract "
                    f"(dit_jax.models.contract.Denoiser): missing {missing}")
  check_options(model, ("time_input", TIME_INPUTS))
  for key, spec in model.condition_spec.items():
    if spec.dtype != cond_spec(key).dtype:
      raise InputError(f"{type(model).__name__} declares {key!r} as {spec.dtype}, but "
                       f"{key!r} means {KEYS[key][1]} ({cond_spec(key).dtype}) everywhere")


def example_condition(model, batch: int, abstract: bool = False) -> dict | None:
  """A placeholder `cond` from the spec: zeros (True for masks), or ShapeDtypeStructs when
  `abstract`; None for an unconditional model."""
  def make(spec):
    fill = jax.ShapeDtypeStruct if abstract else (jnp.ones if spec.dtype == np.bool_ else jnp.zeros)
    return fill((batch, *spec.shape), spec.dtype)
  return {key: make(spec) for key, spec in model.condition_spec.items()} or None


def example_inputs(model, image_shape, batch: int = 1, abstract: bool = True):
  """(x (B, H, W, C), t (B,), cond) for init, tracing or compiling `model`: ShapeDtypeStructs
  when `abstract` (no memory), else zeros."""
  make = jax.ShapeDtypeStruct if abstract else jnp.zeros
  x, t = make((batch, *image_shape), jnp.float32), make((batch,), jnp.float32)
  return x, t, example_condition(model, batch, abstract)


def params_init(model, image_shape):
  """rng -> the model's parameters (boxed with logical axis names) for images of
  `image_shape`: the `init` of a model's engine task and of restoring its checkpoints."""
  def init(rng):
    return model.init(rng, *example_inputs(model, image_shape, abstract=False))["params"]
  return init


def ddpm_step(t: jax.Array, num_steps: int) -> jax.Array:
  """t in [0, 1] -> the nearest DDPM step n = N (1 - t) - 1 (int32); the inverse of
  `flow.paths.ddpm_step_to_t`."""
  return jnp.round(num_steps * (1.0 - jnp.asarray(t, jnp.float32)) - 1.0).astype(jnp.int32)


def model_time(t_B: jax.Array, time_input: str, num_ddpm_steps: int = 1000) -> jax.Array:
  """What a model's time embedding sees for our t: t itself ('unit') or the DDPM step as a
  float ('ddpm_step', published DiT checkpoints)."""
  if time_input == "unit":
    return jnp.asarray(t_B, jnp.float32)
  if time_input == "ddpm_step":
    return ddpm_step(t_B, num_ddpm_steps).astype(jnp.float32)
  raise InputError(f"time_input={time_input!r} is not one of {TIME_INPUTS}")


def class_count(model) -> int:
  """Classes of a label-conditioned model (the null class excluded); 0 without 'label'."""
  return model.num_classes if "label" in model.condition_spec else 0
