"""U-Net (each way of injecting time and class) against the quickstart DiT of similar FLOPs on
8x8 digits, everything else the quickstart's.

    dit-jax sweep --config configs/sweeps/unet_vs_dit.py --workdir runs/sweeps/unet_vs_dit

Runs: configs/unet.py's UNet-small with conditioning add / scale_shift / cross_attn, and the
quickstart's DiT (patch 1, width 64, depth 4): the quickstart's data, objective, optimizer,
2,000 steps at batch 64 and sampler (Heun 25 steps, guidance 2), 2 seeds. Every 500 steps, FD,
accuracy, precision and recall of 500 EMA samples in the features of the digits/8 classifier;
the step-1000 column is the length the retired experiments/unet_vs_dit.py trained.
"""
from pathlib import Path

from dit_jax.config import load_config, model_section
from dit_jax.models.unet import CONDITIONINGS

QUICKSTART = Path(__file__).resolve().parents[1] / "quickstart.py"


def get_config(arg: str = ""):
  del arg
  config = load_config(str(QUICKSTART))
  config.evals.samples.update(every=500, num_samples=500)
  return config


def get_sweep(arg: str = ""):
  del arg
  runs = {f"U-Net {c}": {"model": model_section("UNet-small", conditioning=c)}
          for c in CONDITIONINGS}
  runs["DiT"] = {}  # the base run: the quickstart's model
  return dict(
      title="U-Net (three ways of injecting time and class) vs DiT on 8x8 digits",
      description="UNet-small with time and class added after a conv (DDPM), as a GroupNorm "
                  "scale-shift (ADM) or through cross-attention (LDM), against the quickstart "
                  "DiT (patch 1); the quickstart's data, objective, optimizer, steps and "
                  "sampler. FD: Fréchet distance of EMA samples (uniform labels, Heun 25 steps, "
                  "guidance 2) to the test digits in the features of a digits classifier "
                  "trained on the training split; accuracy: how often that classifier reads "
                  "the requested digit.",
      runs=runs, seeds=[0, 1],
      metrics=("eval/fd", "eval/accuracy", "eval/precision", "eval/recall", "loss"))
