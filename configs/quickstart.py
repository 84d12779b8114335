"""A tiny class-conditional DiT on the bundled 8x8 digits; trains on 2 CPU cores in minutes.

    dit-jax train --config configs/quickstart.py --workdir runs/quickstart
    dit-jax sample --workdir runs/quickstart --per-class 8 --out digits.png
"""
from dit_jax.config import base_config, evaluator_section, model_section


def get_config(arg: str = ""):
  del arg
  config = base_config()
  config.model = model_section("DiT", patch_size=1, hidden_size=64, depth=4, num_heads=4,
                               num_classes=10, learn_sigma=False)
  config.data.update(name="digits/8", batch_size=64)
  config.optim.update(lr=1e-3, warmup_steps=100, schedule="cosine")
  config.train.update(steps=2000, log_every=100, checkpoint_every=500, sample_every=1000,
                      ema_decay=0.995)
  config.sample.update(method="heun", steps=25, cfg_scale=2.0)
  # Fréchet distance and accuracy of 500 EMA samples in the features of a digits classifier
  # (trained once, ~1 min, cached in the TFDS data dir), against the test split.
  config.evals.samples = evaluator_section("samples", every=1000, num_samples=500)
  return config
