"""The quickstart's tiny digits DiT with a chosen position encoding, for resolution studies.

    dit-jax train --config configs/posenc.py:rope_mixed --workdir runs/posenc/rope_mixed

arg: sincos | rope_axial | rope_mixed | rope_scaled | none. rope_scaled maps every token grid
onto the 8x8 training grid by cell centres, so samples at other sizes keep the trained range.
"""
from dit_jax.config import base_config
from dit_jax.models.dit import POSENCS

TRAIN_GRID = 8  # digits/8 with patch 1: an 8x8 token grid


def get_config(arg: str = "sincos"):
  if arg not in POSENCS:
    raise ValueError(f"configs/posenc.py:{arg!r}: the argument must be one of {POSENCS}")
  config = base_config()
  config.model.update(name="DiT", patch_size=1, hidden_size=64, depth=4, num_heads=4,
                      num_classes=10, learn_sigma=False, posenc=arg)
  if arg == "rope_scaled":
    config.model.update(rope_reference_size=TRAIN_GRID, rope_scaling="canonical")
  config.data.update(name="digits/8", batch_size=64)
  config.optim.update(lr=1e-3, warmup_steps=100, schedule="cosine")
  config.train.update(steps=1000, log_every=100, checkpoint_every=500, sample_every=1000,
                      ema_decay=0.995)
  config.sample.update(method="heun", steps=25, cfg_scale=2.0)
  return config
