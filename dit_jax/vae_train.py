"""Training a KL autoencoder on a TFDS image data set: `dit-jax train-vae`.

loss = reconstruction + kl_weight * KL, both per image element: the reconstruction is the mean
|x - x'| (l1) or (x - x')^2 (l2) over pixels and channels, the KL is KL(q(z|x) || N(0, I))
summed over the latent and divided by the number of pixel elements. This is LDM's loss (sum
of the pixel NLL and kl_weight * KL per image) divided by H*W*C, so LDM's kl_weight = 1e-6
carries over. No perceptual or adversarial term: nothing to download.

The run directory holds what `train` writes (checkpoints/, metrics.jsonl, tensorboard/,
config.json) plus, at the end, `vae/` in the diffusers AutoencoderKL layout (what `--vae`
takes), `reconstructions.png` and `eval.json` (PSNR on the evaluation split). With
vae_train.auto_scale the exported scaling_factor is 1 / std of the latents (the SD recipe).
"""
import functools
import json
from pathlib import Path
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dit_jax import checkpoint, data, images, parallel
from dit_jax.convert.vae import save_vae
from dit_jax.models.vae import AutoencoderKL, create_vae
from dit_jax.train import PreemptionGuard, StepFn, make_optimizer, with_shardings
from dit_jax.training_log import MetricsLog


@flax.struct.dataclass
class VAETrainState:
  step: jax.Array
  params: Any
  ema_params: Any  # equals params when train.ema_decay == 0
  opt_state: Any
  rng: jax.Array


def psnr(x, y) -> jax.Array:
  """Peak signal-to-noise ratio in dB of images in [-1, 1] (peak-to-peak 2), per image."""
  mse = jnp.mean(jnp.square(x - y), axis=tuple(range(1, x.ndim)))
  return 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-12))


def vae_loss(params, vae: AutoencoderKL, x_BHWC, rng, *, reconstruction: str,
             kl_weight: float):
  if reconstruction not in ("l1", "l2"):
    raise ValueError(f"vae_train.reconstruction={reconstruction!r}: use 'l1' or 'l2'")
  recon, dist = vae.apply({"params": params}, x_BHWC, rng)
  diff = recon - x_BHWC
  rec = jnp.mean(jnp.abs(diff) if reconstruction == "l1" else jnp.square(diff))
  kl = jnp.mean(dist.kl()) / np.prod(x_BHWC.shape[1:])
  loss = rec + kl_weight * kl
  return loss, dict(rec=rec, kl=kl, psnr=jnp.mean(psnr(jnp.clip(recon, -1, 1), x_BHWC)))


def train_step(state: VAETrainState, x_BHWC, *, vae, optimizer, schedule, ema_decay: float,
               reconstruction: str, kl_weight: float):
  rng = jax.random.fold_in(state.rng, state.step)
  loss_fn = functools.partial(vae_loss, vae=vae, x_BHWC=x_BHWC, rng=rng,
                              reconstruction=reconstruction, kl_weight=kl_weight)
  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema_params, params)
  metrics = dict(aux, loss=loss, grad_norm=optax.tree.norm(grads), lr=schedule(state.step))
  return state.replace(step=state.step + 1, params=params, ema_params=ema,
                       opt_state=opt_state), metrics


def create_state(vae, optimizer, rng, image_shape) -> VAETrainState:
  init_rng, base_rng = jax.random.split(rng)
  x = jnp.zeros((1, *image_shape), jnp.float32)
  params = nn.unbox(vae.init(init_rng, x)["params"])
  return VAETrainState(step=jnp.zeros((), jnp.int32), params=params,
                       ema_params=jax.tree.map(jnp.copy, params),
                       opt_state=optimizer.init(params), rng=base_rng)


def state_shardings(vae, optimizer, image_shape, plan: parallel.ShardingPlan):
  """(abstract VAETrainState, its shardings under `plan`): parameters by their logical axis
  names, as for the denoisers (train.state_shardings)."""
  abstract = jax.eval_shape(lambda rng: create_state(vae, optimizer, rng, image_shape),
                            jax.random.PRNGKey(0))
  x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  boxed = jax.eval_shape(vae.init, jax.random.PRNGKey(0), x)
  return abstract, plan.state_shardings(abstract, nn.get_partition_spec(boxed)["params"])


def evaluate(vae, params, data_config, num_batches: int):
  """Mean PSNR / L1 of mode reconstructions, latent std, and one batch of (x, x')."""
  it = data.make_iterator(dict(data_config, shuffle=False), process_index=0, process_count=1)
  forward = jax.jit(lambda p, x: vae.apply({"params": p}, x))
  psnrs, l1s, latents = [], [], []
  first = None
  for _ in range(num_batches):
    x = jnp.asarray(next(it)["image"])
    recon, dist = forward(params, x)
    recon = jnp.clip(recon, -1, 1)
    psnrs.append(np.asarray(psnr(recon, x)))
    l1s.append(float(jnp.mean(jnp.abs(recon - x))))
    latents.append(np.asarray(dist.sample(jax.random.PRNGKey(len(latents)))))
    first = first if first is not None else (np.asarray(x), np.asarray(recon))
  z = np.concatenate(latents)
  return dict(psnr=float(np.mean(np.concatenate(psnrs))), l1=float(np.mean(l1s)),
              latent_mean=float(z.mean()), latent_std=float(z.std())), first


def train_vae(config: ml_collections.ConfigDict, workdir: str):
  """Trains config.vae on config.data; returns (vae, params) as exported to workdir/vae."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  vt = config.vae_train
  vae = create_vae(config.vae)
  image_shape = data.image_shape(config.data)
  vae.check_config(*image_shape[:2])
  if image_shape[-1] != vae.in_channels:
    vae = vae.clone(in_channels=image_shape[-1], out_channels=image_shape[-1])
  optimizer, schedule = make_optimizer(config.optim, config.train.steps)
  plan = parallel.ShardingPlan.create(config.get("mesh"))  # the same mesh rules as train.py
  plan.check_batch(config.data.batch_size)
  abstract, shardings = state_shardings(vae, optimizer, image_shape, plan)
  data_iter = data.make_iterator(config.data)
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints)
  if jax.process_index() == 0:
    (workdir / "config.json").write_text(config.to_json(indent=2))
  restored = ckpt.restore(with_shardings(abstract, shardings))
  if restored is None:
    state = jax.jit(lambda key: create_state(vae, optimizer, key, image_shape),
                    out_shardings=shardings)(jax.random.PRNGKey(config.seed))
  else:
    state, data_state = restored
    if data_state is not None:
      data_iter.set_state(data_state)
  step_fn = StepFn(functools.partial(
      train_step, vae=vae, optimizer=optimizer, schedule=schedule,
      ema_decay=config.train.ema_decay, reconstruction=vt.reconstruction,
      kl_weight=vt.kl_weight), plan, shardings)
  total = config.train.steps
  log = MetricsLog(workdir, enabled=jax.process_index() == 0, total_steps=total,
                   images_per_step=config.data.batch_size)
  guard = PreemptionGuard()
  try:
    step = int(state.step)
    log.start(step)
    while step < total:
      batch = plan.global_batch({"image": next(data_iter)["image"]})
      state, metrics = step_fn(state, batch["image"])
      step += 1
      log.add(step, metrics)
      stopping = guard.requested()
      saving = step == total or stopping or step % config.train.checkpoint_every == 0
      if saving or step % config.train.log_every == 0:
        log.flush(step)
      if saving:
        ckpt.save(step, state, data_iter.get_state())
      if stopping:
        log.message(f"SIGTERM: saved step {step}, stopping")
        return None
  finally:
    guard.restore()
    ckpt.close()
    log.close()
  params = state.ema_params if config.train.ema_decay > 0 else state.params
  # Gathered onto every device so each process can evaluate and process 0 can export.
  params = jax.jit(lambda p: p, out_shardings=plan.replicated())(params)
  eval_data = {**config.data.to_dict(), "split": vt.eval_split}
  stats, (x, recon) = evaluate(vae, params, eval_data, vt.eval_batches)
  if vt.auto_scale:
    vae = vae.clone(scaling_factor=round(1.0 / stats["latent_std"], 5), shift_factor=0.0)
  stats.update(step=int(state.step), scaling_factor=vae.scaling_factor)
  if jax.process_index() == 0:
    save_vae(workdir / "vae", vae, jax.device_get(params))
    (workdir / "eval.json").write_text(json.dumps(stats, indent=2))
    pairs = images.to_uint8(np.concatenate([x[:16], recon[:16]]))
    images.save_png(images.make_grid(pairs, rows=2), workdir / "reconstructions.png",
                    upscale=max(1, 64 // x.shape[1]))
  return vae, params
