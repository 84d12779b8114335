"""The train state and the pure, jitted train step of a `Task`, and what a run of a config
compiles (`prepare`): optimizer and schedule, EMA, the abstract state with its shardings and
the step. Nothing here touches a file: the loop (`loop.py`) restores, trains and saves.
"""
import contextlib
import dataclasses
import functools
from typing import Any, Callable, Protocol

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from dit_jax import parallel
from dit_jax.errors import InputError

# ------------------------------------------------------------------------------------------
# State, optimizer, EMA


@dataclasses.dataclass(frozen=True)
class EMA:
  """Exponential moving average of the parameters: ema = d * ema + (1 - d) * params.

  With `warmup` the decay is min(decay, (1 + step) / (10 + step)), so a short run does not keep
  a large share of its initial weights (0.999^1000 = 37% after 1,000 steps without it)."""
  decay: float = 0.999
  warmup: bool = False

  def decay_at(self, step):
    if not self.warmup:
      return jnp.float32(self.decay)
    step = step.astype(jnp.float32)
    return jnp.minimum(jnp.float32(self.decay), (1.0 + step) / (10.0 + step))


@flax.struct.dataclass
class TrainState:
  """Parameters, their EMA, the optimizer state and the base key; `tx` and `ema` are static."""
  step: jax.Array        # number of completed steps
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array         # base key; step s uses fold_in(rng, s)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False, default=None)
  ema: EMA = flax.struct.field(pytree_node=False, default=EMA())

  @classmethod
  def create(cls, params, tx, rng, ema: EMA = EMA()) -> "TrainState":
    ema_params = jax.tree.map(jnp.copy, params)  # own buffers: the step donates both
    return cls(step=jnp.zeros((), jnp.int32), params=params, ema_params=ema_params,
               opt_state=tx.init(params), rng=rng, tx=tx, ema=ema)

  def apply_gradients(self, grads) -> "TrainState":
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    params = optax.apply_updates(self.params, updates)
    d = self.ema.decay_at(self.step)
    ema_params = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, self.ema_params, params)
    return self.replace(step=self.step + 1, params=params, ema_params=ema_params,
                        opt_state=opt_state)


def learning_rate_schedule(optim, total_steps: int) -> optax.Schedule:
  """Linear warmup to optim.lr, then constant or cosine decay to lr * end_lr_factor."""
  warmup = optax.linear_schedule(0.0, optim.lr, max(optim.warmup_steps, 1))
  if optim.schedule == "constant":
    after = optax.constant_schedule(optim.lr)
  elif optim.schedule == "cosine":
    decay_steps = max(total_steps - optim.warmup_steps, 1)
    after = optax.cosine_decay_schedule(optim.lr, decay_steps, alpha=optim.end_lr_factor)
  else:
    raise InputError(f"optim.schedule={optim.schedule!r} is not one of ('constant', 'cosine')")
  return optax.join_schedules([warmup, after], [optim.warmup_steps])


def decay_mask(params):
  """Weight decay on matrices (kernels, tables) only: not on biases and norm scales."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(optim, total_steps: int):
  """AdamW with warmup + schedule and gradient clipping; returns (optimizer, schedule)."""
  if not optim.lr > 0:
    raise InputError(f"optim.lr={optim.lr} must be positive")
  schedule = learning_rate_schedule(optim, total_steps)
  adamw = optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                      weight_decay=optim.weight_decay, mask=decay_mask)
  chain = [adamw] if not optim.grad_clip else [optax.clip_by_global_norm(optim.grad_clip), adamw]
  return optax.chain(*chain), schedule


def ema_of(train_config) -> EMA:
  return EMA(decay=float(train_config.ema_decay),
             warmup=bool(train_config.ema_warmup))


# ------------------------------------------------------------------------------------------
# Task: what is trained


@dataclasses.dataclass(frozen=True)
class Task:
  """`init(rng)` -> parameters (flax `variables["params"]`, boxed with logical axis names);
  `loss(params, batch, rng)` -> (scalar loss, dict of scalar metrics); `batch_keys`: the keys
  of a data batch the loss reads (sent to the devices, split along the batch axis)."""
  init: Callable[[jax.Array], Any]
  loss: Callable[[Any, dict, jax.Array], tuple[jax.Array, dict]]
  batch_keys: tuple[str, ...] = ("image",)


class CheckpointableIterator(Protocol):
  def __next__(self) -> dict: ...
  def get_state(self) -> dict: ...
  def set_state(self, state: dict) -> None: ...


def create_state(task: Task, optimizer, rng, ema: EMA = EMA()) -> TrainState:
  init_rng, base_rng = jax.random.split(rng)  # init_params draws the parameters the same way
  return TrainState.create(nn.unbox(task.init(init_rng)), optimizer, base_rng, ema)


def logical_param_specs(task: Task):
  """PartitionSpecs of logical axis names for every parameter (shapes only, no memory)."""
  return nn.get_partition_spec(jax.eval_shape(task.init, jax.random.PRNGKey(0)))


def state_shardings(task: Task, optimizer, plan: parallel.ShardingPlan, ema: EMA = EMA()):
  """(abstract TrainState, its NamedShardings under `plan`), computed without memory."""
  abstract = jax.eval_shape(lambda rng: create_state(task, optimizer, rng, ema),
                            jax.random.PRNGKey(0))
  return abstract, plan.state_shardings(abstract, logical_param_specs(task))


def abstract_params(task: Task, plan: parallel.ShardingPlan):
  """ShapeDtypeStructs of the parameters with their shardings under `plan` (no memory)."""
  abstract = nn.unbox(jax.eval_shape(task.init, jax.random.PRNGKey(0)))
  return with_shardings(abstract, plan.param_shardings(logical_param_specs(task), abstract))


def init_params(task: Task, rng, plan: parallel.ShardingPlan):
  """The parameters alone (no optimizer state, no EMA), created directly in their shards: for
  sampling and benchmarks. The same values as init_state(task, ..., rng, ...).params."""
  shardings = jax.tree.map(lambda a: a.sharding, abstract_params(task, plan))
  init = jax.jit(lambda key: nn.unbox(task.init(jax.random.split(key)[0])),
                 out_shardings=shardings)
  return init(rng)


def init_state(task: Task, optimizer, rng, plan: parallel.ShardingPlan,
               ema: EMA = EMA()) -> TrainState:
  """The train state created directly in its shards: no device ever holds all of it."""
  _, shardings = state_shardings(task, optimizer, plan, ema)
  init = jax.jit(lambda key: create_state(task, optimizer, key, ema), out_shardings=shardings)
  return init(rng)


def with_shardings(abstract, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def train_step(state: TrainState, batch: dict, *, task: Task, schedule=None):
  """One optimizer step; pure, so it is jitted once and its state donated.

  `finite` (1 or 0) says whether the loss, the gradient norm and every updated parameter are
  finite: a few reductions on the device, read by the loop before it saves anything."""
  step_rng = jax.random.fold_in(state.rng, state.step)
  (loss, aux), grads = jax.value_and_grad(task.loss, has_aux=True)(state.params, batch,
                                                                   step_rng)
  grad_norm = optax.tree.norm(grads)
  new_state = state.apply_gradients(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite(new_state.params)
  metrics = dict(aux, loss=loss, grad_norm=grad_norm, finite=finite.astype(jnp.float32))
  if schedule is not None:
    metrics["lr"] = schedule(state.step)
  return new_state, metrics


class StepFn:
  """train_step jitted once with the old state donated (updated in place); under a plan, with
  explicit state shardings and the mesh + logical rules active while it traces."""

  def __init__(self, step, plan: parallel.ShardingPlan | None = None, shardings=None):
    self.plan = plan
    if plan is None:
      self.jitted = jax.jit(step, donate_argnums=0)
    else:  # every batch array is split along its first (batch) dimension
      self.jitted = jax.jit(step, in_shardings=(shardings, plan.batch_sharding()),
                            out_shardings=(shardings, plan.replicated()), donate_argnums=0)

  def _context(self):
    return self.plan.context() if self.plan is not None else contextlib.nullcontext()

  def __call__(self, state, batch):
    with self._context():
      return self.jitted(state, batch)

  def lower(self, state, batch):
    with self._context():
      return self.jitted.lower(state, batch)

  def _cache_size(self) -> int:
    return self.jitted._cache_size()


def make_step_fn(task: Task, schedule=None, plan: parallel.ShardingPlan | None = None,
                 shardings=None) -> StepFn:
  return StepFn(functools.partial(train_step, task=task, schedule=schedule), plan, shardings)


@dataclasses.dataclass(frozen=True)
class Prepared:
  """What a run of a config compiles, before any memory is used: the optimizer and its
  schedule, the EMA, the abstract state with its shardings, and the jitted step. `run` trains
  with it; `dit_jax.perf.aot` compiles the same step for a TPU topology."""
  optimizer: optax.GradientTransformation
  schedule: optax.Schedule
  ema: EMA
  abstract: TrainState
  shardings: TrainState
  step_fn: StepFn

  def abstract_state(self) -> TrainState:
    """ShapeDtypeStructs of the state, each with its sharding (for lowering)."""
    return with_shardings(self.abstract, self.shardings)


def prepare(task: Task, config: ml_collections.ConfigDict,
            plan: parallel.ShardingPlan) -> Prepared:
  """The optimizer, EMA, abstract state, shardings and jitted step of `task` under `config`."""
  optimizer, schedule = make_optimizer(config.optim, int(config.train.steps))
  ema = ema_of(config.train)
  plan.check_batch(config.data.batch_size)
  abstract, shardings = state_shardings(task, optimizer, plan, ema)
  return Prepared(optimizer, schedule, ema, abstract, shardings,
                  make_step_fn(task, schedule, plan, shardings))
