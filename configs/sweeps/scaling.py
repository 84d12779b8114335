"""Study 2 of the DiT paper (its Figures 2 and 8, Table 4) in miniature: quality against model
size x patch size, i.e. against forward Gflops and training compute.

    dit-jax sweep --config configs/sweeps/scaling.py --workdir runs/sweeps/scaling
    dit-jax sweep --config configs/sweeps/scaling.py:gpu --workdir runs/sweeps/scaling_gpu

Sizes keep the ratios of DiT-S/B/L/XL (width 384/768/1024/1152, depth 12/12/24/28) scaled down
with 16-feature heads. Patch sizes give the token grids of DiT-*/8, */4 and */2 relative to the
input side.
Default (2-core CPU): 8x8 digits, S/B/L (widths 32/64/80, depths 3/3/6) x patch 4/2/1
(4/16/64 tokens), 600 steps at batch 64, 2 seeds, 300 samples evaluated every 100 steps; XL
is left out for time. `gpu`: 32x32 digits, S/B/L/XL (widths 64/128/176/192, depths
6/6/12/14) x patch 8/4/2 (16/64/256 tokens, DiT's grids at 256 px), 3,000 steps at batch 256,
bfloat16 compute, 2 seeds, 1,000 samples evaluated every 500 steps. The EMA warms up
(decay min(d, (1 + step) / (10 + step))), so early evaluations show the model, not the
initial weights.
"""
from dit_jax.config import base_config, evaluator_section, model_section

SIZES = {"S": (32, 3), "B": (64, 3), "L": (80, 6), "XL": (96, 7)}  # CPU: (width, depth)
GPU_SIZES = {"S": (64, 6), "B": (128, 6), "L": (176, 12), "XL": (192, 14)}
HEAD_DIM = 16


def get_config(arg: str = ""):
  gpu = arg == "gpu"
  config = base_config()
  config.model = model_section("DiT", patch_size=1, hidden_size=64, depth=4, num_heads=4,
                               num_classes=10, learn_sigma=False,
                               dtype="bfloat16" if gpu else "float32")
  config.data.update(name="digits/32" if gpu else "digits/8", batch_size=256 if gpu else 64)
  config.optim.update(lr=1e-3, warmup_steps=100, schedule="cosine")
  steps = 3000 if gpu else 600
  config.train.update(steps=steps, log_every=100, checkpoint_every=steps // 2,
                      sample_every=steps, ema_decay=0.999 if gpu else 0.995, ema_warmup=True,
                      samples_per_class=4)
  config.sample.update(method="heun", steps=12, cfg_scale=2.0)
  # Six evaluations a run: the compute ranges of neighbouring sizes overlap (Figure 8).
  config.evals.samples = evaluator_section("samples", every=steps // 6,
                                           num_samples=1000 if gpu else 300, batch_size=300)
  return config


def get_sweep(arg: str = ""):
  gpu = arg == "gpu"
  sizes = GPU_SIZES if gpu else {k: v for k, v in SIZES.items() if k != "XL"}
  patches = (8, 4, 2) if gpu else (4, 2, 1)
  runs = {f"{size}/{p}": {"model.hidden_size": width, "model.depth": depth,
                          "model.num_heads": width // HEAD_DIM, "model.patch_size": p}
          for size, (width, depth) in sizes.items() for p in patches}
  return dict(
      title="Scaling with Gflops (DiT paper, Figures 2 and 8) on "
            + ("32x32 digits" if gpu else "8x8 digits"),
      description="DiT sizes with the S/B/L/XL ratios of width and depth, each at three patch "
                  "sizes; FD of EMA samples (uniform labels, Heun 12 steps, guidance 2) to the "
                  "test digits in the features of a digits classifier, six times during "
                  "training.",
      runs=runs, seeds=[0, 1],
      metrics=("eval/fd", "eval/accuracy", "loss"))
