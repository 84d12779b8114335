"""The quickstart's digits run with the small U-Net instead of the DiT.

    dit-jax train --config configs/unet.py --workdir runs/unet
    dit-jax train --config configs/unet.py:cross_attn --workdir runs/unet_cross_attn
    dit-jax flops --config configs/unet.py:scale_shift

arg: how time and class enter the U-Net, add | scale_shift (default) | cross_attn (see
dit_jax/models/unet.py). Data, objective, optimizer, steps and sampler are the quickstart's.
"""
from pathlib import Path

import ml_collections

from dit_jax.config import load_config
from dit_jax.models.unet import CONDITIONINGS, PRESETS


def get_config(arg: str = "scale_shift"):
  if arg not in CONDITIONINGS:
    raise ValueError(f"configs/unet.py:{arg!r}: the argument must be one of {CONDITIONINGS}")
  config = load_config(str(Path(__file__).with_name("quickstart.py")))
  # A new model section (the DiT fields of the base config do not apply to a U-Net) that
  # spells out the preset, so that --config.model.FIELD=VALUE can override any of it.
  config.model = ml_collections.ConfigDict(
      {"name": "UNet-small", **PRESETS["UNet-small"], "conditioning": arg,
       "downsample": "conv", "upsample": "transpose", "class_dropout_prob": 0.1,
       "attention_backend": "auto", "dtype": "float32", "param_dtype": "float32"})
  return config
