"""Study 1 of the DiT paper (its Figure 5) in miniature: how the class and time condition enters
a DiT block (adaLN-Zero, adaLN, cross-attention, in-context tokens), everything else equal.

    dit-jax sweep --config configs/sweeps/conditioning.py --workdir runs/sweeps/conditioning
    dit-jax sweep --config configs/sweeps/conditioning.py:long --workdir runs/sweeps/cond_long
    dit-jax sweep --config configs/sweeps/conditioning.py:gpu --workdir runs/sweeps/cond_gpu

Default (2-core CPU): 16x16 digits, patch 2 (64 tokens, as DiT-*/4 on 256 px), width 64,
depth 4, 900 steps at batch 64, 3 seeds; Fréchet distance and accuracy of 400 EMA samples in
the digits/16 classifier's features against the 297 test digits every 300 steps. The EMA
(decay 0.995, no warm-up, as the quickstart) still holds 0.995^300 = 22% of the initial weights
at step 300, so the early evaluations mix model quality with EMA lag, equally for every design.
`gpu`: 32x32 digits, patch 2 (256 tokens, as DiT-*/2), width 192, depth 6, 4,000 steps at
batch 256, 1,000 samples every 1,000 steps, bfloat16 compute, EMA 0.999 with warm-up, 3 seeds.
Every variant logs the loss by noise level (`loss_by_t`: the objective at t = 0.05, 0.2, 0.5,
0.8, 0.95 on the first 128 test digits with fixed noise, EMA and raw parameters) every 100
steps (gpu: 250 on 256 digits).

`long`: the CPU sweep at LONG_STEPS = 2,000 steps (the cosine decays over all of them: use a
new --workdir), 3 seeds, FD and accuracy of 400 samples every 500 steps (4 evaluations; the
designs' Gflops differ by at most 14%, so equal steps are close to equal compute).
Wall clock, measured (2026-12-06): seeds 0 and 1 took 63 min for their 8 runs (seed 1 on an
idle 2-core machine: 6.8-8.4 min a run; estimated before running: 9-13), so about 1.6 h with
the third seed (`--seeds 2` adds it to the same --workdir).
"""
from dit_jax.config import base_config, evaluator_section, model_section

CONDITIONINGS = ["adaln_zero", "adaln", "cross_attn", "in_context"]
VARIANTS = ("", "gpu", "long")
LONG_STEPS = 2000


def _variant(arg: str) -> str:
  if arg not in VARIANTS:
    raise ValueError(f"configs/sweeps/conditioning.py:{arg}: the variants are "
                     f"{', '.join(repr(v) for v in VARIANTS)}")
  return arg


def get_config(arg: str = ""):
  gpu, long = _variant(arg) == "gpu", arg == "long"
  config = base_config()
  config.model = model_section(
      "DiT", patch_size=2, hidden_size=192 if gpu else 64, depth=6 if gpu else 4,
      num_heads=6 if gpu else 4, num_classes=10, learn_sigma=False,
      dtype="bfloat16" if gpu else "float32")
  config.data.update(name="digits/32" if gpu else "digits/16", batch_size=256 if gpu else 64)
  config.optim.update(lr=1e-3, warmup_steps=100, schedule="cosine")
  steps = 4000 if gpu else LONG_STEPS if long else 900
  evaluations = 4 if gpu or long else 3
  config.train.update(steps=steps, log_every=100, checkpoint_every=steps // evaluations,
                      sample_every=steps, ema_decay=0.995 if not gpu else 0.999,
                      ema_warmup=gpu, samples_per_class=4)
  config.sample.update(method="heun", steps=12, cfg_scale=2.0)
  config.evals.samples = evaluator_section(
      "samples", every=steps // evaluations, num_samples=1000 if gpu else 400, batch_size=200)
  config.evals.loss_by_t = evaluator_section("loss_by_t", every=250 if gpu else 100,
                                             num_samples=256 if gpu else 128,
                                             batch_size=256 if gpu else 128)
  return config


def get_sweep(arg: str = ""):
  losses = tuple(f"eval/loss_t={t:g}" for t in (0.05, 0.2, 0.5, 0.8, 0.95))
  return dict(
      title="Conditioning designs (DiT paper, Figure 5) on "
            + ("32x32 digits, width 192, depth 6" if _variant(arg) == "gpu" else
               "16x16 digits, width 64, depth 4")
            + (f", {LONG_STEPS} steps" if arg == "long" else ""),
      description="DiT with patch 2; only model.conditioning differs. FD: Fréchet distance of "
                  "EMA samples (uniform labels, Heun 12 steps, guidance 2) to the test digits "
                  "in the features of a digits classifier trained on the training split; "
                  "accuracy: how often that classifier reads the requested digit; loss_t=T: "
                  "the loss at time T on fixed test digits and noise (EMA).",
      axes={"model.conditioning": CONDITIONINGS},
      seeds=[0, 1, 2],
      metrics=("eval/fd", "eval/accuracy", "eval/precision", "eval/recall", "loss", *losses))
