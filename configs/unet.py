"""The quickstart's digits run with the small U-Net instead of the DiT.

    dit-jax train --config configs/unet.py --workdir runs/unet
    dit-jax train --config configs/unet.py:cross_attn --workdir runs/unet_cross_attn
    dit-jax flops --config configs/unet.py:scale_shift

arg: how time and class enter the U-Net, add | scale_shift (default) | cross_attn (see
dit_jax/models/unet.py). Data, objective, optimizer, steps and sampler are the quickstart's.
"""
from pathlib import Path

from dit_jax.config import load_config, model_section
from dit_jax.models.unet import CONDITIONINGS


def get_config(arg: str = "scale_shift"):
  if arg not in CONDITIONINGS:
    raise ValueError(f"configs/unet.py:{arg!r}: the argument must be one of {CONDITIONINGS}")
  config = load_config(str(Path(__file__).with_name("quickstart.py")))
  # The U-Net's section spells out the preset, so --config.model.FIELD=VALUE overrides any of it.
  config.model = model_section("UNet-small", conditioning=arg)
  return config
