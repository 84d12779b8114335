"""A small class-conditional DiT on VAE latents of the bundled 32x32 shapes (8x8x4 latents of
the tiny VAE of configs/vae.py): the whole latent pipeline, with no download.

    dit-jax train-vae --config configs/vae.py --workdir runs/vae
    dit-jax extract-latents --config configs/latent_quickstart.py --vae runs/vae \
        --out runs/latents --flip
    dit-jax train --config configs/latent_quickstart.py --workdir runs/latent_dit

`extract-latents` reads data.name / split / image_size; `train` reads the latents from
data.latents (the encoder never runs) and decodes its sample grids with the VAE in data.vae.
"""
from dit_jax.config import base_config, model_section


def get_config(arg: str = ""):
  del arg
  config = base_config()
  config.model = model_section("DiT", patch_size=2, hidden_size=128, depth=4, num_heads=4,
                               num_classes=18, learn_sigma=False)
  config.data.update(name="shapes/single_32", image_size=32, batch_size=64,
                     latent_downsample=4, latent_channels=4)
  config.data.latents = "runs/latents"  # written by extract-latents
  config.data.vae = "runs/vae"          # decodes samples (train-vae workdir or diffusers folder)
  config.optim.update(lr=1e-3, warmup_steps=100, schedule="cosine")
  config.train.update(steps=2000, log_every=100, checkpoint_every=500, sample_every=1000,
                      samples_per_class=4, ema_decay=0.995)
  config.sample.update(method="heun", steps=25, cfg_scale=2.0)
  return config
