"""Study 1 of the DiT paper (its Figure 5) in miniature: how the class and time condition enters
a DiT block (adaLN-Zero, adaLN, cross-attention, in-context tokens), everything else equal.

    dit-jax sweep --config configs/sweeps/conditioning.py --workdir runs/sweeps/conditioning
    dit-jax sweep --config configs/sweeps/conditioning.py:gpu --workdir runs/sweeps/cond_gpu

Default (2-core CPU): 16x16 digits, patch 2 (64 tokens, as DiT-*/4 on 256 px), width 64,
depth 4, 900 steps at batch 64, 3 seeds; Fréchet distance and accuracy of 400 EMA samples in
the digits/16 classifier's features against the 297 test digits every 300 steps. The EMA
(decay 0.995, no warm-up, as the quickstart) still holds 0.995^300 = 22% of the initial weights
at step 300, so the early evaluations mix model quality with EMA lag, equally for every design.
`gpu`: 32x32 digits, patch 2 (256 tokens, as DiT-*/2), width 192, depth 6, 4,000 steps at
batch 256, 1,000 samples every 1,000 steps, bfloat16 compute, EMA 0.999 with warm-up, 3 seeds.
"""
from dit_jax.config import base_config, evaluator_section, model_section

CONDITIONINGS = ["adaln_zero", "adaln", "cross_attn", "in_context"]


def get_config(arg: str = ""):
  gpu = arg == "gpu"
  config = base_config()
  config.model = model_section(
      "DiT", patch_size=2, hidden_size=192 if gpu else 64, depth=6 if gpu else 4,
      num_heads=6 if gpu else 4, num_classes=10, learn_sigma=False,
      dtype="bfloat16" if gpu else "float32")
  config.data.update(name="digits/32" if gpu else "digits/16", batch_size=256 if gpu else 64)
  config.optim.update(lr=1e-3, warmup_steps=100, schedule="cosine")
  steps = 4000 if gpu else 900
  config.train.update(steps=steps, log_every=100, checkpoint_every=steps // (4 if gpu else 3),
                      sample_every=steps, ema_decay=0.995 if not gpu else 0.999,
                      ema_warmup=gpu, samples_per_class=4)
  config.sample.update(method="heun", steps=12, cfg_scale=2.0)
  config.evals.samples = evaluator_section(
      "samples", every=steps // (4 if gpu else 3), num_samples=1000 if gpu else 400,
      batch_size=200)
  return config


def get_sweep(arg: str = ""):
  return dict(
      title="Conditioning designs (DiT paper, Figure 5) on "
            + ("32x32 digits, width 192, depth 6" if arg == "gpu" else
               "16x16 digits, width 64, depth 4"),
      description="DiT with patch 2; only model.conditioning differs. FD: Fréchet distance of "
                  "EMA samples (uniform labels, Heun 12 steps, guidance 2) to the test digits "
                  "in the features of a digits classifier trained on the training split; "
                  "accuracy: how often that classifier reads the requested digit.",
      axes={"model.conditioning": CONDITIONINGS},
      seeds=[0, 1, 2],
      metrics=("eval/fd", "eval/accuracy", "eval/precision", "eval/recall", "loss"))
