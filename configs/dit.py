"""DiT on ImageNet 256x256 as 32x32x4 VAE latents: the reference large run of the DiT paper
(AdamW 1e-4 constant, no weight decay, batch 256, EMA 0.9999), trained with flow matching.

The argument picks the model preset:
    dit-jax flops --config configs/dit.py:DiT-B/4 --config.model.conditioning=cross_attn
    dit-jax train --config configs/dit.py:DiT-XL/2 --workdir runs/dit_xl2

Training reads VAE latents that you extract once from your own manual download of ImageNet
(TFDS `imagenet2012`) with the SD VAE (diffusers folder `sd-vae-ft-ema`, on disk):
    dit-jax extract-latents --config configs/dit.py --vae sd-vae-ft-ema --out latents/in256 \
        --flip --compute-dtype bfloat16
    dit-jax train --config configs/dit.py:DiT-XL/2 --workdir runs/dit_xl2 \
        --config.data.latents=latents/in256 --config.mesh.fsdp=8 --config.mesh.data=-1 \
        --config.mesh.rules=fsdp

Blocks are scanned (scan_layers=True): one compiled block, and as lean as unrolled ones since a
scanned stack keeps only matmul outputs for the backward pass (nn.stack.SCAN_NONE_POLICY). For
DiT-XL/2 on a v5e-16 slice, fsdp, batch 256: 4.71 GiB per chip scanned vs 7.81 GiB unrolled,
compiled in 42 s vs 149 s (experiments/results/tpu_aot.md). The H100 table in
experiments/results/gpu_bench_h100.md predates that change (scanned was then 1.53x slower);
set --config.model.scan_layers=False to compare on your GPU.
"""
from dit_jax.config import base_config, model_section


def get_config(arg: str = "DiT-XL/2"):
  config = base_config()
  config.model = model_section(arg, num_classes=1000, class_dropout_prob=0.1, learn_sigma=True,
                               dtype="bfloat16", scan_layers=True)
  config.objective.update(kind="flow", t_dist="uniform")
  config.data.update(name="imagenet2012", image_size=256, batch_size=256, num_threads=16,
                     latent_downsample=8, latent_channels=4)
  config.optim.update(lr=1e-4, warmup_steps=0, schedule="constant", weight_decay=0.0,
                      grad_clip=0.0)
  config.train.update(steps=400_000, log_every=100, checkpoint_every=10_000,
                      sample_every=50_000, samples_per_class=1, ema_decay=0.9999)
  config.sample.update(method="heun", steps=50, cfg_scale=1.5)
  return config
