"""Training a denoiser (DiT, U-Net, MM-DiT) from a config: the engine's task for a model and an
objective, and `train_and_evaluate(config, workdir)`, what `dit-jax train` calls.

The loop, state, checkpoints, guards and hooks are the engine's (`dit_jax.engine`); this file
only says what a denoiser's parameters and loss are, and adds its hooks: sample grids of the
EMA model, the loss plot, and the evaluations of config.evals (`dit_jax.eval.evaluators`).
"""
import functools
import time

import jax
import ml_collections

from dit_jax import engine, flow, parallel, paths
from dit_jax.config import model_input_shape
from dit_jax.engine.run_log import plot_loss_curve, read_history
from dit_jax.errors import InputError
from dit_jax.eval import evaluators
from dit_jax.models import contract, create_model, model_fn
from dit_jax.sampling.sampler import grid_condition


def _denoiser_loss(params, batch, rng, *, model, objective):
  loss_rng, dropout_rng = jax.random.split(rng)
  cond = {key: batch[key] for key in model.condition_keys} or None
  fn = model_fn(model, params, train=True, rng=dropout_rng)
  return objective.loss(fn, loss_rng, batch["image"], cond)


def denoiser_task(model, objective, image_shape) -> engine.Task:
  """A denoiser trained with `objective` on batches of `image` and its condition keys."""
  return engine.Task(init=contract.params_init(model, image_shape),
                     loss=functools.partial(_denoiser_loss, model=model, objective=objective),
                     batch_keys=("image", *model.condition_keys))


def train_step_flops(model, image_shape, batch_size: int) -> float:
  """Model flops of one train step on `batch_size` inputs of `image_shape`: the contract's
  forward multiply-adds x 2 (a multiply-add is 2 flops in a chip's peak FLOP/s) x 3 (the
  backward pass costs two forwards). What the log's TFLOP/s and MFU and `dit-jax bench` count."""
  return 3 * 2 * sum(model.forward_flops(*image_shape).values()) * batch_size


def initial_params(config, model):
  """The parameters of config.train.init_from (a published DiT converted with `dit-jax
  convert`), checked against config.model, or None for a run from random init."""
  path = config.train.init_from
  if not path:
    return None
  from dit_jax.convert.dit import load_converted, model_fields
  params, info = load_converted(path)
  differ = [f"model.{key}: {getattr(model, key)!r} here, {value!r} there"
            for key, value in model_fields(info).items() if getattr(model, key) != value]
  if differ:
    raise InputError(f"train.init_from={path} is a DiT with other fields than config.model "
                     f"({'; '.join(differ)}): set them with --config.model.FIELD=VALUE")
  return params


def sample_grid_hook(run: evaluators.EvalContext, workdir, rows_cond) -> engine.Periodic:
  """EMA samples, one row per class (or per caption), and the loss plot."""
  config, sampler = run.config, run.sampler()
  is_main, workdir = jax.process_index() == 0, paths.as_path(workdir)

  def action(step, state):
    # Every process samples (the parameters are spread over all); process 0 writes.
    sampler.write_grid(state.ema_params, jax.random.PRNGKey(config.seed + 1),
                       workdir / "samples" / f"step_{step:07d}.png",
                       per_class=config.train.samples_per_class, write=is_main,
                       rows_cond=rows_cond)
    if is_main:
      history = [h for h in read_history(workdir) if "loss" in h]
      plot_loss_curve(history, workdir / "loss.png")
  return engine.Periodic("samples", config.train.sample_every, action,
                         at_end=config.train.sample_every > 0)


def check_classes(config, model):
  """Refuses data with more classes than the model's label table: its labels would index the
  null class or past the table, and the loss turns NaN at step 1 without saying why."""
  from dit_jax import data  # TFDS: only when training from a data set
  classes = contract.class_count(model)
  if not classes or config.data.latents:
    return
  have = data.num_classes(config.data)
  if have and have > classes:
    raise InputError(f"model.num_classes={classes} but data.name={config.data.name!r} has {have} "
                     f"classes (labels 0..{have - 1}): set --config.model.num_classes={have}")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       on_start=None) -> engine.TrainState:
  """Trains config.model on config.data with config.objective; writes everything to workdir.

  Runs on the mesh of config.mesh (all devices of all processes); every process runs this
  same function, only process 0 writes logs and images, all write their checkpoint shards.
  Raises engine.Preempted after SIGTERM / SIGINT (saved; rerun to resume). `on_start(state)`
  is called with the restored or initial state before the first step.
  """
  from dit_jax import data  # TFDS and grain: only when training from a data set

  if config.data.latent_downsample > 1 and not config.data.latents:
    raise InputError("config.data.latent_downsample > 1 needs config.data.latents: a folder "
                     "written by `dit-jax extract-latents --config ... --vae ... --out DIR`")
  model = create_model(config.model)
  check_classes(config, model)
  objective = flow.make_objective(config.objective)
  image_shape = model_input_shape(config.data)
  plan = parallel.ShardingPlan.create(config.mesh)
  data_iter = data.make_iterator(config.data, process_index=jax.process_index(),
                                 process_count=jax.process_count())
  rows_cond = None  # caption-conditioned models: grid rows are the first captions of the data
  if model.condition_keys and "label" not in model.condition_spec:
    first = next(data.make_iterator(dict(config.data.to_dict(), shuffle=False),
                                    process_index=0, process_count=1))
    rows_cond = grid_condition(model, first)
  evaluated = evaluators.EvalContext(config, model, objective, image_shape, plan)
  hooks = [sample_grid_hook(evaluated, workdir, rows_cond)] if config.train.sample_every else []
  hooks += evaluators.hooks(evaluated)
  run = engine.Run(config=config, workdir=paths.as_path(workdir), data=data_iter, plan=plan,
                   hooks=hooks, on_start=on_start, initial_params=initial_params(config, model),
                   flops_per_step=train_step_flops(model, image_shape, config.data.batch_size))
  return engine.run(denoiser_task(model, objective, image_shape), run)


def train(config: ml_collections.ConfigDict, workdir: str) -> str:
  """`dit-jax train`: train_and_evaluate, then one line on what it trained and where its
  outputs are (or why nothing was trained: the run was already at train.steps)."""
  start, first = time.perf_counter(), []
  state = train_and_evaluate(config, workdir, on_start=lambda s: first.append(int(s.step)))
  if int(state.step) == first[0]:
    return (f"nothing was trained: {workdir} is at step {first[0]} and train.steps="
            f"{config.train.steps}; raise --config.train.steps to train further")
  return (f"trained steps {first[0]}..{int(state.step)} in {time.perf_counter() - start:.0f} "
          f"s; samples, loss.png, metrics.jsonl, tensorboard/ and checkpoints/ are in {workdir}")
