"""Training a KL autoencoder on a TFDS image data set: `dit-jax train-vae`.

loss = reconstruction + kl_weight * KL, both per image element: the reconstruction is the mean
|x - x'| (l1) or (x - x')^2 (l2) over pixels and channels, the KL is KL(q(z|x) || N(0, I))
summed over the latent and divided by the number of pixel elements. This is LDM's loss (sum
of the pixel NLL and kl_weight * KL per image) divided by H*W*C, so LDM's kl_weight = 1e-6
carries over. No perceptual or adversarial term: nothing to download.

The run directory holds what `train` writes (checkpoints/, metrics.jsonl, tensorboard/,
config.json) plus, at the end, `vae/` in dit_jax's own VAE folder format (`vae_files`: what
`--vae` takes; `convert.vae.save_vae` writes the diffusers layout), `reconstructions.png` and
`eval.json` (PSNR on the evaluation split). With vae_train.auto_scale the exported
scaling_factor is 1 / std of the latents (the SD recipe).
"""
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dit_jax import data, engine, parallel, paths
from dit_jax.errors import InputError
from dit_jax.models.vae import AutoencoderKL, create_vae
from dit_jax.sampling import images
from dit_jax.sampling.vae_files import save_vae
from dit_jax.state_files import read_json, write_json


def psnr(x, y) -> jax.Array:
  """Peak signal-to-noise ratio in dB of images in [-1, 1] (peak-to-peak 2), per image."""
  mse = jnp.mean(jnp.square(x - y), axis=tuple(range(1, x.ndim)))
  return 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-12))


def vae_loss(params, vae: AutoencoderKL, x_BHWC, rng, *, reconstruction: str,
             kl_weight: float):
  if reconstruction not in ("l1", "l2"):
    raise InputError(f"vae_train.reconstruction={reconstruction!r}: use 'l1' or 'l2'")
  recon, dist = vae.apply({"params": params}, x_BHWC, rng)
  diff = recon - x_BHWC
  rec = jnp.mean(jnp.abs(diff) if reconstruction == "l1" else jnp.square(diff))
  kl = jnp.mean(dist.kl()) / np.prod(x_BHWC.shape[1:])
  loss = rec + kl_weight * kl
  return loss, dict(rec=rec, kl=kl, psnr=jnp.mean(psnr(jnp.clip(recon, -1, 1), x_BHWC)))


def vae_task(vae: AutoencoderKL, image_shape, *, reconstruction: str,
             kl_weight: float) -> engine.Task:
  def init(rng):
    return vae.init(rng, jnp.zeros((1, *image_shape), jnp.float32))["params"]

  def loss(params, batch, rng):
    return vae_loss(params, vae, batch["image"], rng, reconstruction=reconstruction,
                    kl_weight=kl_weight)
  return engine.Task(init=init, loss=loss)


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
  workdir = paths.as_path(workdir)
  paths.make_dirs(workdir)
  vt = config.vae_train
  vae = create_vae(config.vae)
  image_shape = data.image_shape(config.data)
  vae.check_config(*image_shape[:2])
  if image_shape[-1] != vae.in_channels:
    vae = vae.clone(in_channels=image_shape[-1], out_channels=image_shape[-1])
  plan = parallel.ShardingPlan.create(config.mesh)  # the same mesh rules as train.py
  task = vae_task(vae, image_shape, reconstruction=vt.reconstruction, kl_weight=vt.kl_weight)
  data_iter = data.make_iterator(config.data, process_index=jax.process_index(),
                                 process_count=jax.process_count())
  state = engine.run(task, engine.Run(config=config, workdir=workdir, data=data_iter, plan=plan))
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
    write_json(workdir / "eval.json", stats, indent=2)
    pairs = images.to_uint8(np.concatenate([x[:16], recon[:16]]))
    images.save_png(images.make_grid(pairs, rows=2), workdir / "reconstructions.png",
                    upscale=max(1, 64 // x.shape[1]))
  return vae, params


def train_vae_summary(config: ml_collections.ConfigDict, workdir: str) -> str:
  """`dit-jax train-vae`: train_vae, then one line with the evaluation PSNR, the scaling
  factor and the folder to pass as --vae."""
  start = time.perf_counter()
  train_vae(config, workdir)
  stats = read_json(paths.as_path(workdir) / "eval.json", "the VAE's evaluation")
  return (f"trained in {time.perf_counter() - start:.0f} s: {config.vae_train.eval_split} PSNR "
          f"{stats['psnr']:.2f} dB, scaling_factor {stats['scaling_factor']}; --vae "
          f"{workdir} (the VAE folder is {paths.as_path(workdir) / 'vae'})")
