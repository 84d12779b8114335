"""Sampling a published DiT converted with `dit-jax convert` (`dit-jax sample --converted`),
the way the DiT paper did: 250 steps of ancestral DDPM with the learned variance on the
respaced chain, classifier-free guidance, latents decoded by the SD VAE.
"""
import time

import jax
import numpy as np

from dit_jax.convert.dit import load_converted
from dit_jax.convert.dit_sample import PAPER_LABELS, decode_latents, sample_latents
from dit_jax.errors import InputError
from dit_jax.sampling import images


def sample_converted(directory, out, *, labels=None, method=None, steps=None, cfg_scale=None,
                     guide_channels=None, seed: int = 0, vae=None) -> str:
  """Samples the converted DiT in `directory` for `labels` (default: the classes of the DiT
  sample script) and writes `out`: a PNG grid or an .npz of uint8 images (with `vae`), or an
  .npz of the latents as the model sees them (without). Returns a one-line summary."""
  params, info = load_converted(directory)
  labels = (np.array(labels, np.int32) if labels
            else np.array(PAPER_LABELS, np.int32) % max(info["num_classes"], 1))
  start = time.perf_counter()
  latents = sample_latents(params, info, labels, jax.random.PRNGKey(seed),
                           method=method or "ddpm", steps=steps or 250,
                           cfg_scale=4.0 if cfg_scale is None else cfg_scale,
                           guide_channels=guide_channels)
  seconds = time.perf_counter() - start
  if vae is None:
    if not str(out).endswith(".npz"):
      raise InputError("without --vae only latents can be written: use --out FILE.npz, or pass "
                       "--vae DIR (the SD VAE) to write images")
    np.savez(out, latents=latents, labels=labels)
  else:
    samples = images.to_uint8(decode_latents(latents, vae))
    if str(out).endswith(".npz"):
      images.save_npz(samples, labels, out)
    else:
      images.save_png(images.make_grid(samples, rows=-(-len(samples) // 4)), out)
  return f"wrote {len(labels)} samples to {out} (sampled in {seconds:.1f} s)"
