"""The quickstart's tiny digits DiT with a chosen position encoding, for resolution studies.

    dit-jax train --config configs/posenc.py:rope_mixed --workdir runs/posenc/rope_mixed

arg: sincos | rope_axial | rope_mixed | rope_scaled | none. rope_scaled maps every token grid
onto the 8x8 training grid by cell centres, so samples at other sizes keep the trained range.
"""
from pathlib import Path

from dit_jax.config import load_config
from dit_jax.models.dit import POSENCS

TRAIN_GRID = 8  # digits/8 with patch 1: an 8x8 token grid


def get_config(arg: str = "sincos"):
  if arg not in POSENCS:
    raise ValueError(f"configs/posenc.py:{arg!r}: the argument must be one of {POSENCS}")
  config = load_config(str(Path(__file__).with_name("quickstart.py")))
  config.model.update(posenc=arg)
  if arg.startswith("rope"):  # the split the recorded study used: half the head to rows, half
    head = config.model.hidden_size // config.model.num_heads  # to columns, none to the index
    config.model.update(rope_axes_dims=(0, head // 2, head // 2))
  if arg == "rope_scaled":
    config.model.update(rope_reference_size=TRAIN_GRID, rope_scaling="canonical")
  config.train.update(steps=1000, sample_every=1000)
  return config
