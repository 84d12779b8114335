"""Training: train state, a pure jitted train step, and the loop (EMA, logs, checkpoints,
sample grids). `train_and_evaluate(config, workdir)` is what `dit-jax train` calls.

Restarting with the same command resumes exactly: the step, the optimizer and EMA state, the
data iterator position and the per-step random keys (fold_in(seed key, step)) all come back.
"""
import contextlib
import functools
import json
import signal
from pathlib import Path
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from dit_jax import checkpoint, flow, parallel, plots
from dit_jax.config import model_input_shape
from dit_jax.models import contract, create_model, model_fn
from dit_jax.sample import ImageSampler, grid_condition
from dit_jax.training_log import MetricsLog


@flax.struct.dataclass
class TrainState:
  step: jax.Array        # number of completed steps
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array         # base key; step s uses fold_in(rng, s)


def learning_rate_schedule(optim, total_steps: int) -> optax.Schedule:
  """Linear warmup to optim.lr, then constant or cosine decay to lr * end_lr_factor."""
  warmup = optax.linear_schedule(0.0, optim.lr, max(optim.warmup_steps, 1))
  if optim.schedule == "constant":
    after = optax.constant_schedule(optim.lr)
  elif optim.schedule == "cosine":
    decay_steps = max(total_steps - optim.warmup_steps, 1)
    after = optax.cosine_decay_schedule(optim.lr, decay_steps, alpha=optim.end_lr_factor)
  else:
    raise ValueError(f"optim.schedule={optim.schedule!r} is not one of ('constant', 'cosine')")
  return optax.join_schedules([warmup, after], [optim.warmup_steps])


def decay_mask(params):
  """Weight decay on matrices (kernels, tables) only: not on biases and norm scales."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(optim, total_steps: int):
  """AdamW with warmup + schedule and gradient clipping; returns (optimizer, schedule)."""
  if optim.lr <= 0:
    raise ValueError(f"optim.lr={optim.lr} must be positive")
  schedule = learning_rate_schedule(optim, total_steps)
  adamw = optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                      weight_decay=optim.weight_decay, mask=decay_mask)
  chain = [adamw] if not optim.grad_clip else [optax.clip_by_global_norm(optim.grad_clip), adamw]
  return optax.chain(*chain), schedule


def example_inputs(model, image_shape, batch: int = 1):
  return contract.example_inputs(model, image_shape, batch, abstract=False)


def create_train_state(model, optimizer, rng, image_shape) -> TrainState:
  init_rng, base_rng = jax.random.split(rng)
  params = nn.unbox(model.init(init_rng, *example_inputs(model, image_shape))["params"])
  ema_params = jax.tree.map(jnp.copy, params)  # own buffers: the step donates both
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=ema_params,
                    opt_state=optimizer.init(params), rng=base_rng)


def logical_param_specs(model, image_shape):
  """PartitionSpecs of logical axis names for every parameter (shapes only, no memory)."""
  boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), *example_inputs(model, image_shape))
  return nn.get_partition_spec(boxed)["params"]


def state_shardings(model, optimizer, image_shape, plan: parallel.ShardingPlan):
  """(abstract TrainState, its NamedShardings under `plan`), computed without memory."""
  abstract = jax.eval_shape(lambda rng: create_train_state(model, optimizer, rng, image_shape),
                            jax.random.PRNGKey(0))
  return abstract, plan.state_shardings(abstract, logical_param_specs(model, image_shape))


def init_train_state(model, optimizer, rng, image_shape,
                     plan: parallel.ShardingPlan) -> TrainState:
  """The train state created directly in its shards: no device ever holds all of it."""
  _, shardings = state_shardings(model, optimizer, image_shape, plan)
  init = jax.jit(lambda key: create_train_state(model, optimizer, key, image_shape),
                 out_shardings=shardings)
  return init(rng)  # out_shardings place every parameter; see ShardingPlan.context


def train_step(state: TrainState, batch: dict, *, model, objective, optimizer, schedule,
               ema_decay: float):
  """One optimizer step; pure, so it is jitted once and its state donated."""
  step_rng = jax.random.fold_in(state.rng, state.step)
  loss_rng, dropout_rng = jax.random.split(step_rng)
  cond = {key: batch[key] for key in model.condition_keys} or None

  def loss_fn(params):
    fn = model_fn(model, params, train=True, rng=dropout_rng)
    return objective.loss(fn, loss_rng, batch["image"], cond)

  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema_params, params)
  metrics = dict(aux, loss=loss, grad_norm=optax.tree.norm(grads), lr=schedule(state.step))
  new_state = state.replace(step=state.step + 1, params=params, ema_params=ema,
                            opt_state=opt_state)
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


def make_step_fn(model, objective, optimizer, schedule, ema_decay: float,
                 plan: parallel.ShardingPlan | None = None, shardings=None) -> StepFn:
  step = functools.partial(train_step, model=model, objective=objective, optimizer=optimizer,
                           schedule=schedule, ema_decay=ema_decay)
  return StepFn(step, plan, shardings)


class PreemptionGuard:
  """Turns SIGTERM into a request to save and stop at the next step boundary."""

  def __init__(self):
    self._requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    self._requested = True

  def requested(self) -> bool:
    return self._requested

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def single_device_plan() -> parallel.ShardingPlan:
  return parallel.ShardingPlan.create(dict(data=1, rules="dp"), devices=jax.devices()[:1])


def abstract_train_state(config, image_shape, plan: parallel.ShardingPlan | None = None):
  """Shapes, dtypes and shardings (default: one device) of the train state, without memory:
  what a checkpoint is restored onto, whatever mesh it was saved from."""
  plan = plan or single_device_plan()
  model = create_model(config.model)
  optimizer, _ = make_optimizer(config.optim, config.train.steps)
  abstract, shardings = state_shardings(model, optimizer, image_shape, plan)
  return with_shardings(abstract, shardings)


def with_shardings(abstract, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def load_run(workdir, plan: parallel.ShardingPlan | None = None
             ) -> tuple[ml_collections.ConfigDict, TrainState]:
  """The config and the latest train state of a run directory (for sampling, evaluation),
  restored onto `plan` (default: one device), whatever mesh the run was trained on."""
  workdir = Path(workdir)
  path = workdir / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: --workdir must be a directory written by "
                            "`dit-jax train`")
  config = ml_collections.ConfigDict(json.loads(path.read_text()))
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", async_save=False)
  try:
    restored = ckpt.restore(abstract_train_state(config, model_input_shape(config.data), plan))
  finally:
    ckpt.close()
  if restored is None:
    raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}: train first")
  return config, restored[0]


def save_run_config(config: ml_collections.ConfigDict, workdir: Path, resuming: bool):
  """Writes config.json; a resumed run must train the same model on the same data."""
  path = workdir / "config.json"
  if resuming and path.exists():
    saved = json.loads(path.read_text())
    for section in ("model", "data"):
      if saved.get(section) != json.loads(config[section].to_json()):
        raise ValueError(
            f"workdir {workdir} holds a run with a different config.{section} "
            f"({saved.get(section)}); resume with the same config or pick a new --workdir")
  path.write_text(config.to_json(indent=2))


def _is_due(step: int, every: int, last: int) -> bool:
  return step == last or (every > 0 and step % every == 0)


def _any_process(flag: bool) -> bool:
  """True on every process if it is true on any (a SIGTERM may reach hosts at different
  steps; all must save the same step together)."""
  if jax.process_count() == 1:
    return flag
  return bool(multihost_utils.process_allgather(np.array(flag)).any())


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains config.model on config.data with config.objective; writes everything to workdir.

  Runs on the mesh of config.mesh (all devices of all processes); every process runs this
  same function, only process 0 writes logs and images, all write their checkpoint shards.
  """
  # TFDS and grain are imported only when training from a data set.
  from dit_jax import data, latents

  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  is_main = jax.process_index() == 0

  model = create_model(config.model)
  objective = flow.make_objective(config.objective)
  if config.data.get("latent_downsample", 1) > 1 and not config.data.get("latents"):
    raise ValueError("config.data.latent_downsample > 1 needs config.data.latents: a folder "
                     "written by `dit-jax extract-latents --config ... --vae ... --out DIR`")
  image_shape = model_input_shape(config.data)
  total_steps = config.train.steps
  optimizer, schedule = make_optimizer(config.optim, total_steps)
  plan = parallel.ShardingPlan.create(config.get("mesh"))
  plan.check_batch(config.data.batch_size)
  abstract, shardings = state_shardings(model, optimizer, image_shape, plan)
  data_iter = data.make_iterator(config.data, process_index=jax.process_index(),
                                 process_count=jax.process_count())

  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints)
  save_run_config(config, workdir, resuming=ckpt.latest_step() is not None)
  restored = ckpt.restore(with_shardings(abstract, shardings))  # onto this mesh, any saved one
  if restored is None:
    state = init_train_state(model, optimizer, jax.random.PRNGKey(config.seed), image_shape,
                             plan)
  else:
    state, data_state = restored
    if data_state is not None:
      data_iter.set_state(data_state)

  step_fn = make_step_fn(model, objective, optimizer, schedule, config.train.ema_decay, plan,
                         shardings)
  sampler = ImageSampler(model, objective, config.sample, image_shape, plan,
                         decode=latents.decoder_for(config))
  rows_cond = None  # caption-conditioned models: grid rows are the first captions of the data
  if model.condition_keys and "label" not in model.condition_spec:
    first = next(data.make_iterator(dict(config.data.to_dict(), shuffle=False),
                                    process_index=0, process_count=1))
    rows_cond = grid_condition(model, first)
  log = MetricsLog(workdir, enabled=is_main, total_steps=total_steps,
                   images_per_step=config.data.batch_size)
  guard = PreemptionGuard()
  try:
    step = int(state.step)
    log.start(step)
    while step < total_steps:
      local = next(data_iter)
      batch = plan.global_batch({key: local[key] for key in ("image", *model.condition_keys)})
      state, metrics = step_fn(state, batch)
      step += 1
      log.add(step, metrics)
      stopping = _any_process(guard.requested())
      saving = _is_due(step, config.train.checkpoint_every, total_steps) or stopping
      if saving or _is_due(step, config.train.log_every, total_steps):
        log.flush(step)  # raises on a non-finite loss, before anything is saved
      if saving:
        ckpt.save(step, state, data_iter.get_state())
      if config.train.sample_every > 0 and _is_due(step, config.train.sample_every, total_steps):
        # Every process samples (the parameters are spread over all); process 0 writes.
        sampler.write_grid(state.ema_params, jax.random.PRNGKey(config.seed + 1),
                           workdir / "samples" / f"step_{step:07d}.png",
                           per_class=config.train.samples_per_class, write=is_main,
                           rows_cond=rows_cond)
        if is_main:
          plots.plot_loss_curve(log.history, workdir / "loss.png")
      if stopping:
        log.message(f"SIGTERM: saved step {step}, stopping")
        break
  finally:
    guard.restore()
    ckpt.close()
    log.close()
  return state
