"""Why MM-DiT exists: configs/mmdit.py's five text-conditioned variants of about equal forward
FLOPs (pooled adaLN, cross-attention, double-, single-stream and hybrid joint attention) on the
compositional captions of shapes/multi_fixed_24; experiments/mmdit_composition.py checks
their samples against the captions.

    dit-jax sweep --config configs/sweeps/mmdit_composition.py --workdir runs/sweeps/mmdit \\
        --parallel 2
    python experiments/mmdit_composition.py prepare --out runs/mmdit_data
    python experiments/mmdit_composition.py report --data runs/mmdit_data/data.npz \\
        --sweep-dir runs/sweeps/mmdit --out experiments/results

arg: '' (the CPU sizes of configs/mmdit.py) or 'gpu' (its larger sizes). The recorded run's
settings: 3,500 steps at batch 64, learning rate 1e-3 with 200 warm-up steps and cosine decay
to 5%, gradient clipping 1, EMA 0.999 with warm-up (a short run's plain EMA keeps a share of
the zero-output initial weights), seeds 0 and 1. No evaluation during training (the training
evaluator samples class labels); checkpoints every 1,000 steps stay for the report's learning
curve.
"""
from pathlib import Path

from dit_jax.config import config_module, load_config

MMDIT = Path(__file__).resolve().parents[1] / "mmdit.py"
VARIANTS = config_module(str(MMDIT))[0].VARIANTS


def _size(arg: str) -> str:
  if arg not in ("", "gpu"):
    raise ValueError(f"configs/sweeps/mmdit_composition.py:{arg!r}: the argument is '' or 'gpu'")
  return arg or "cpu"


def get_config(arg: str = ""):
  config = load_config(f"{MMDIT}:{VARIANTS[0]}@{_size(arg)}")
  config.optim.update(lr=1e-3, warmup_steps=200, schedule="cosine", end_lr_factor=0.05,
                      grad_clip=1.0, weight_decay=0.0)
  steps = 3500
  config.train.update(steps=steps, log_every=100, checkpoint_every=1000, keep_checkpoints=5,
                      sample_every=steps, ema_decay=0.999, ema_warmup=True)
  return config


def get_sweep(arg: str = ""):
  size = _size(arg)
  runs = {v: {"model": load_config(f"{MMDIT}:{v}@{size}").model} for v in VARIANTS}
  return dict(
      title=f"MM-DiT vs DiT baselines on compositional shapes captions ({size} sizes)",
      description="Text-conditioned models of about equal forward FLOPs on 24x24 images of "
                  "2-3 shapes, each 80% of its 3x3-grid cell and centred, with captions such "
                  "as 'a red circle on the right and a blue square at the bottom'. Only the "
                  "training loss here; experiments/mmdit_composition.py report scores the "
                  "samples with the exact composition checker.",
      runs=runs, seeds=[0, 1], metrics=("loss",))
