"""Position encodings for the resolution study: the quickstart's tiny DiT on 8x8 digits, once
per encoding of configs/posenc.py; experiments/posenc_resolution.py then samples every run at
other sizes.

    dit-jax sweep --config configs/sweeps/posenc.py --workdir runs/sweeps/posenc
    python experiments/posenc_resolution.py --sweep-dir runs/sweeps/posenc

1,000 steps at batch 64 each (configs/posenc.py), seed 0 (as the recorded study); one
evaluation at the end (500 EMA samples at the training size, digits/8 classifier features).
"""
from pathlib import Path

from dit_jax.config import load_config

POSENC = Path(__file__).resolve().parents[1] / "posenc.py"
ENCODINGS = ("sincos", "rope_axial", "rope_mixed", "rope_scaled")


def encoding_config(encoding: str):
  return load_config(f"{POSENC}:{encoding}")


def get_config(arg: str = ""):
  del arg
  config = encoding_config(ENCODINGS[0])
  config.evals.samples.update(every=config.train.steps)  # light: only at the end, at 8x8
  return config


def encoding_fields(encoding: str) -> dict:
  """The model fields configs/posenc.py:ENCODING sets away from the base run's (the posenc
  and its RoPE split / reference grid), so --config.model.* overrides still reach every run."""
  base, model = encoding_config(ENCODINGS[0]).model, encoding_config(encoding).model
  return {f"model.{k}": v for k, v in model.items() if base.get(k) != v}


def get_sweep(arg: str = ""):
  del arg
  return dict(
      title="Position encodings of a DiT on 8x8 digits (trained at 8x8)",
      description="The quickstart DiT (patch 1: 8x8 tokens) with each position encoding of "
                  "configs/posenc.py. FD and accuracy at the training size only; "
                  "experiments/posenc_resolution.py samples the runs at 6, 8, 12 and 16 pixels.",
      runs={e: encoding_fields(e) for e in ENCODINGS}, seeds=[0],
      metrics=("eval/fd", "eval/accuracy", "loss"))
