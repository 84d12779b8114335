"""Loss by noise level: the run's own objective on a fixed held-out batch at fixed times t with
fixed noise, for the EMA and the raw parameters (EDM's loss against sigma, in our time).

The training loss averages over t (logit-normal sampling puts most of its weight on t = 0.2 ..
0.8) and over fresh noise, so one falling number hides where a model still learns: near noise
(t -> 0) the loss tends to the data's variance whatever the model, near data (t -> 1) to the
noise's, and in between a plateau shows as a flat curve at that t only. Each number here is the
mean over the batch of `objective.losses_at`, the per-example loss that the training loss
averages (flow matching at x_t = (1 - t) x0 + t x1; DDPM at the chain's step nearest to t), with
the model in eval mode (no label dropout: the conditional loss).

    batch = held_out(config.data, model.condition_keys, "test", 256, seed=0)
    losses = LossByT(objective, apply_of(model), batch, (0.2, 0.5), batch_size=256)
    losses(state.ema_params)                 # {0.2: 0.41, 0.5: 0.33}

`loss_by_t_evaluator` is the training-time evaluator of kind 'loss_by_t' (`eval/loss_t=0.5`,
`eval/loss_raw_t=0.5`); `evaluate_run` is `dit-jax eval-loss`.
"""
import functools
import json
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax import data, flow
from dit_jax.data.latent_source import LatentSource
from dit_jax.errors import InputError
from dit_jax.models import create_model, model_fn
from dit_jax.sampling import runs

DEFAULT_T = (0.05, 0.2, 0.5, 0.8, 0.95)
FORMATS = ("table", "json")


def metric_name(t: float, raw: bool = False) -> str:
  """'loss_t=0.5' (EMA parameters) or 'loss_raw_t=0.5' (the trained ones)."""
  return f"loss{'_raw' if raw else ''}_t={t:g}"


class HeldOut(NamedTuple):
  """A fixed batch: what the model sees, its condition and the noise paired with it."""
  x1: np.ndarray           # (N, H, W, C) float32: images in [-1, 1], or latents
  noise: np.ndarray        # (N, H, W, C) float32 ~ N(0, I), from a fixed seed
  cond: dict | None        # the model's condition keys, (N, ...) each; None: unconditional


def held_out(data_config, condition_keys, split: str, num: int, seed: int = 0,
             latents: str | None = None, log=print) -> HeldOut:
  """The first `num` examples of `split` in stored order (all of them when it has fewer), as
  the training pipeline makes them, with N(0, I) noise from `seed`. A latent run reads
  `latents` (a folder of the held-out split's latents) or else its own data.latents, whose
  split is the one it was encoded from; `split` then does not apply."""
  fields = dict(data_config.items(), split=split, shuffle=False)
  fields["latents"] = latents or fields.get("latents")
  source = (LatentSource(fields["latents"]) if fields["latents"] else
            data.open_source(fields["name"], split, fields.get("data_dir")))
  count = min(num, len(source))
  if count < num:
    where = fields["latents"] or f"split {split!r} of {fields['name']}"
    log(f"{where} has {count} examples, fewer than num_samples={num}: all {count} are used")
  batch = data.make_dataset(dict(fields, batch_size=count), process_index=0, process_count=1)[0]
  missing = sorted(set(condition_keys) - set(batch))
  if missing:
    raise InputError(f"the model reads {missing} but batches of {fields['name']} hold "
                     f"{sorted(batch)}: set data.text_tokenizer for caption models")
  x1 = np.asarray(batch["image"], np.float32)
  noise = np.random.default_rng(seed).standard_normal(x1.shape, dtype=np.float32)
  return HeldOut(x1, noise, {key: np.asarray(batch[key]) for key in condition_keys} or None)


def apply_of(model) -> Callable:
  """(params, x, t, cond) -> prediction of a model of the contract, in eval mode."""
  return lambda params, x, t, cond: model_fn(model, params)(x, t, cond)


def _loss_sum(objective, apply_fn, sharding, params, x1, noise, cond, weight, t):
  """Sum over the batch of weight x the per-example loss at time t (a traced scalar)."""
  if sharding is not None:  # data parallel: each device takes its share of the examples
    x1, noise = (jax.lax.with_sharding_constraint(a, sharding) for a in (x1, noise))
  t_B = jnp.full(weight.shape, t, jnp.float32)
  fn = lambda x, time, c: apply_fn(params, x, time, c)
  return jnp.sum(objective.losses_at(fn, x1, noise, t_B, cond) * weight)


class LossByT:
  """`losses(params)` -> {t: mean per-example loss over the held-out batch}, the same batch
  and noise at every call. One compiled program serves every t and every call: batches of
  `batch_size` (rounded up to a multiple of the plan's data-parallel devices; the last one
  padded, its padding weighted 0)."""

  def __init__(self, objective, apply_fn: Callable, batch: HeldOut, t_values=DEFAULT_T,
               batch_size: int = 256, plan=None):
    self.batch, self.t_values = batch, tuple(float(t) for t in t_values)
    divisor = plan.batch_divisor if plan is not None else 1
    self.batch_size = -(-min(batch_size, len(batch.x1)) // divisor) * divisor
    sharding = plan.batch_sharding(batch.x1.ndim) if plan is not None else None
    self._sum = jax.jit(functools.partial(_loss_sum, objective, apply_fn, sharding),
                        out_shardings=plan.replicated() if plan is not None else None)

  def _chunks(self):
    """(x1, noise, cond, weight) of each padded batch."""
    total, size = len(self.batch.x1), self.batch_size
    for start in range(0, total, size):
      count = min(size, total - start)
      pad = lambda a: np.pad(a[start:start + size], [(0, size - count)] + [(0, 0)] * (a.ndim - 1),
                             mode="edge")
      cond = None if self.batch.cond is None else {k: pad(v) for k, v in self.batch.cond.items()}
      yield pad(self.batch.x1), pad(self.batch.noise), cond, (np.arange(size) < count).astype(
          np.float32)

  def __call__(self, params) -> dict[float, float]:
    sums = dict.fromkeys(self.t_values, 0.0)
    for x1, noise, cond, weight in self._chunks():
      for t in self.t_values:
        sums[t] += float(self._sum(params, x1, noise, cond, weight, np.float32(t)))
    return {t: total / len(self.batch.x1) for t, total in sums.items()}


def named(losses: dict[float, float], raw: bool = False) -> dict[str, float]:
  """{t: loss} -> {'loss_t=T' (or 'loss_raw_t=T'): loss}."""
  return {metric_name(t, raw): value for t, value in losses.items()}


def loss_by_t_evaluator(name: str, ec, run, log=print):
  """The first num_samples examples of `split` with fixed noise, at every time of t_values:
  loss_t=T of the EMA parameters and, with `raw`, loss_raw_t=T of the trained ones."""
  config = run.config
  batch = held_out(config.data, run.model.condition_keys, ec.split, ec.num_samples, ec.seed,
                   ec.latents, log=lambda text: log(f"config.evals.{name}: {text}"))
  losses = LossByT(run.objective, apply_of(run.model), batch, ec.t_values, ec.batch_size,
                   run.plan)

  def action(step, state):
    out = named(losses(state.ema_params))
    if ec.raw:
      out.update(named(losses(state.params), raw=True))
    return out
  return action


def evaluate_run(workdir, steps=None, *, t_values=DEFAULT_T, num: int = 256,
                 split: str = "test", batch_size: int = 256, seed: int = 0, raw: bool = True,
                 latents: str | None = None, log=print) -> list[dict]:
  """`dit-jax eval-loss`: one row {'step', 't', 'ema'[, 'raw']} per checkpoint of `steps`
  (default: the newest) and time t, the same held-out batch and noise for all."""
  rows, losses = [], None
  for step in steps or [None]:
    config, state = runs.load_run(workdir, step=step, raw=raw)
    if losses is None:
      model = create_model(config.model)
      batch = held_out(config.data, model.condition_keys, split, num, seed, latents, log)
      losses = LossByT(flow.make_objective(config.objective), apply_of(model), batch, t_values,
                       batch_size)
    ema, trained = losses(state.ema_params), losses(state.params) if raw else {}
    rows += [dict(step=int(state.step), t=t, ema=ema[t], **({"raw": trained[t]} if raw else {}))
             for t in losses.t_values]
  return rows


def format_rows(rows: list[dict], fmt: str = "table") -> str:
  """`evaluate_run`'s rows as json or an aligned table: step, t, EMA loss[, raw loss]."""
  if fmt == "json":
    return json.dumps(rows, indent=2)
  if fmt not in FORMATS:
    raise InputError(f"format {fmt!r} is not one of {FORMATS}")
  keys = [k for k in ("step", "t", "ema", "raw") if any(k in r for r in rows)]
  header = {"step": "step", "t": "t", "ema": "loss (EMA)", "raw": "loss (raw)"}
  cells = [[header[k] for k in keys]] + [
      [f"{r[k]:g}" if k in ("step", "t") else f"{r[k]:.5f}" for k in keys] for r in rows]
  widths = [max(len(line[i]) for line in cells) for i in range(len(keys))]
  return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in cells)
