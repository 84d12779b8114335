"""Sampling a published DiT converted with `dit-jax convert` (`dit-jax sample --converted`),
the way the DiT paper did, through the sampler of every other model (`ImageSampler`): 250
steps of ancestral DDPM with the learned variance (objective ddpm_hybrid) on the respaced chain
(sample.spacing='respaced'), classifier-free guidance, latents decoded by the SD VAE with the
decoder of latent runs (`latents.latent_decoder`: vae.decode(z / 0.18215), clipped).

    from dit_jax.sampling.converted import sample_converted
    sample_converted("ckpt/DiT-XL-2-256", "samples.png", vae="sd-vae-ft-ema", cfg_scale=4.0)

The original guided only the first three of the four latent channels; `guide_channels=3`
reproduces that, the default guides all.
"""
import time

import jax
import numpy as np

from dit_jax import flow, state_files
from dit_jax.convert.dit import load_converted, make_model
from dit_jax.errors import InputError
from dit_jax.sampling import images
from dit_jax.sampling.latents import latent_decoder
from dit_jax.sampling.sampler import ImageSampler

METHODS = ("ddpm", "ddim")
PAPER_LABELS = (207, 360, 387, 974, 88, 979, 417, 279)  # the classes of the DiT sample script
DECODE_BATCH = 8  # latents per SD VAE call: 256x256 decodes need a few GiB each


def converted_sampler(info: dict, *, method: str = "ddpm", steps: int = 250,
                      cfg_scale: float = 4.0, guide_channels: int | None = None,
                      decode=None) -> ImageSampler:
  """The ImageSampler of a converted DiT (`load_converted`'s info): its model, its DDPM chain
  (with the learned variance when it has one) respaced to `steps`, at the checkpoint's size."""
  if method not in METHODS:
    raise InputError(f"method={method!r} is not one of {METHODS} (the DiT sampler)")
  if cfg_scale != 1.0 and not info["num_classes"]:
    raise InputError("cfg_scale needs a class-conditional model; use cfg_scale=1")
  model = make_model(info)
  objective = flow.make_objective(dict(kind="ddpm_hybrid" if model.learn_sigma else "ddpm",
                                       num_steps=model.num_ddpm_steps))
  sample = dict(method=method, steps=steps, cfg_scale=cfg_scale, spacing="respaced",
                guide_channels=guide_channels or 0)
  side = info["input_size"]
  return ImageSampler(model, objective, sample, (side, side, info["in_channels"]),
                      decode=decode)


def sample_converted(directory, out, *, labels=None, method=None, steps=None, cfg_scale=None,
                     guide_channels=None, seed: int = 0, vae=None) -> str:
  """Samples the converted DiT in `directory` for `labels` (default: the classes of the DiT
  sample script) and writes `out`: a PNG grid or an .npz of uint8 images (with `vae`), or an
  .npz of the latents as the model sees them (without). Returns a one-line summary."""
  params, info = load_converted(directory)
  if vae is None and not str(out).endswith(".npz"):
    raise InputError("without --vae only latents can be written: use --out FILE.npz, or pass "
                     "--vae DIR (the SD VAE) to write images")
  labels = (np.array(labels, np.int32) if labels
            else np.array(PAPER_LABELS, np.int32) % max(info["num_classes"], 1))
  if info["num_classes"] and (labels.min() < 0 or labels.max() > info["num_classes"]):
    raise InputError(f"labels must lie in 0..{info['num_classes']} ({info['num_classes']} is "
                     "the null class)")
  decode = None if vae is None else latent_decoder(vae, batch_size=DECODE_BATCH)
  sampler = converted_sampler(info, method=method or "ddpm", steps=steps or 250,
                              cfg_scale=4.0 if cfg_scale is None else cfg_scale,
                              guide_channels=guide_channels, decode=decode)
  start = time.perf_counter()
  samples = sampler(params, labels, jax.random.PRNGKey(seed))
  seconds = time.perf_counter() - start
  if vae is None:
    state_files.write_npz(out, dict(latents=samples, labels=labels))  # local or gs://
  elif str(out).endswith(".npz"):
    images.save_npz(images.to_uint8(samples), labels, out)
  else:
    grid = images.make_grid(images.to_uint8(samples), rows=-(-len(samples) // 4))
    images.save_png(grid, out)
  done = "sampled and decoded" if vae is not None else "sampled"
  return f"wrote {len(labels)} samples to {out} ({done} in {seconds:.1f} s)"
