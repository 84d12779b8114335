"""Why MM-DiT exists: configs/mmdit.py's five text-conditioned variants of about equal forward
FLOPs (pooled adaLN, cross-attention, double-, single-stream and hybrid joint attention) on the
compositional captions of shapes/multi_fixed_24, their samples checked against the captions
during training (config.evals.composition) and by experiments/mmdit_composition.py.

    dit-jax sweep --config configs/sweeps/mmdit_composition.py --workdir runs/sweeps/mmdit \\
        --parallel 2
    python experiments/mmdit_composition.py --sweep-dir runs/sweeps/mmdit \\
        --out experiments/results

arg: '' (the CPU sizes of configs/mmdit.py) or 'gpu' (its larger sizes). The recorded run's
settings: 3,500 steps at batch 64, learning rate 1e-3 with 200 warm-up steps and cosine decay
to 5%, gradient clipping 1, EMA 0.999 with warm-up (a short run's plain EMA keeps a share of
the zero-output initial weights), seeds 0 and 1. Every 500 steps, the exact composition check
of the first 128 test captions from the same noise (configs/mmdit.py's evaluator): the learning
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
  config.train.update(steps=steps, log_every=100, checkpoint_every=1000, keep_checkpoints=2,
                      sample_every=steps, ema_decay=0.999, ema_warmup=True)
  config.evals.composition.update(every=500, num_samples=128)
  return config


def get_sweep(arg: str = ""):
  size = _size(arg)
  runs = {v: {"model": load_config(f"{MMDIT}:{v}@{size}").model} for v in VARIANTS}
  return dict(
      title=f"MM-DiT vs DiT baselines on compositional shapes captions ({size} sizes)",
      description="Text-conditioned models of about equal forward FLOPs on 24x24 images of "
                  "2-3 shapes, each 80% of its 3x3-grid cell and centred, with captions such "
                  "as 'a red circle on the right and a blue square at the bottom'. Object: "
                  "the fraction of captioned objects drawn in the right colour and shape in "
                  "their cell; all_objects: of images entirely right (empty cells empty); "
                  "unseen: of captions absent from the training split. 128 test captions, "
                  "Euler 40 steps, guidance 3.",
      runs=runs, seeds=[0, 1],
      metrics=("eval/object", "eval/all_objects", "eval/all_objects_unseen", "loss"))
