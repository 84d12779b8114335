"""Study 2 of the DiT paper (its Figures 2 and 8, Table 4) in miniature: quality against model
size x patch size, i.e. against forward Gflops and training compute.

    dit-jax sweep --config configs/sweeps/scaling.py --workdir runs/sweeps/scaling
    dit-jax sweep --config configs/sweeps/scaling.py:long --workdir runs/sweeps/scaling_long
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
initial weights. Every variant logs the loss by noise level (`loss_by_t`: the objective at
t = 0.05, 0.2, 0.5, 0.8, 0.95 on the first 128 test digits with fixed noise, EMA and raw
parameters) every 100 steps (gpu: 250).

`long`: the CPU sweep past the patch-2 plateau (steps ~200-500 at t = 0.2-0.5, where the
600-step cosine schedule ended): the same 18 runs for LONG_STEPS = 2,400 steps (the cosine
decays over all of them; start it in a new --workdir, since extending the 600-step runs would
restart their schedule mid-run). FD and accuracy only where the models reach equal training
compute, the powers of 2 Tflops (LONG_FD_TFLOPS; 3 x Gflops x batch x step, as the report
counts) from step 200 on (`sweep_report.compute_matched_steps`: S/4 at steps 221, 442, 883,
1766; L/1 at 309, 618, 1236), and at the end: 4-5 evaluations a run, 42 a seed (the 600-step
sweep: 54).
Wall clock, measured (2026-12-06): seed 1 took 41 min for its 9 runs on an idle 2-core machine
(S/4 84 s, S/2 91 s, S/1 3.8 min, B/4 75 s, B/2 2.6 min, B/1 7.4 min, L/4 2.2 min, L/2 6.7 min,
L/1 14.3 min), so the 18 runs take about 1.4 h; seed 0 ran beside four other jobs (load 6-20)
at 0.7-5.5x those times (B/1 41 min). The estimate made before running (1.4-1.9 h, L/1 18 min
a run) was about right. `--runs` and `--seeds` train a part into the same --workdir.
"""
from dit_jax.config import base_config, evaluator_section, model_section, set_fields
from dit_jax.studies.sweep import counts
from dit_jax.studies.sweep_report import compute_matched_steps

SIZES = {"S": (32, 3), "B": (64, 3), "L": (80, 6), "XL": (96, 7)}  # CPU: (width, depth)
GPU_SIZES = {"S": (64, 6), "B": (128, 6), "L": (176, 12), "XL": (192, 14)}
HEAD_DIM = 16
VARIANTS = ("", "gpu", "long")
LONG_STEPS = 2400
LONG_FD_TFLOPS = tuple(2.0 ** k for k in range(-7, 5))  # 1/128 .. 16 Tflops of training
LONG_FD_FIRST = 200  # no FD before this step: early samples say little and cost as much


def _variant(arg: str) -> str:
  if arg not in VARIANTS:
    raise ValueError(f"configs/sweeps/scaling.py:{arg}: the variants are "
                     f"{', '.join(repr(v) for v in VARIANTS)}")
  return arg


def get_config(arg: str = ""):
  gpu, long = _variant(arg) == "gpu", arg == "long"
  config = base_config()
  config.model = model_section("DiT", patch_size=1, hidden_size=64, depth=4, num_heads=4,
                               num_classes=10, learn_sigma=False,
                               dtype="bfloat16" if gpu else "float32")
  config.data.update(name="digits/32" if gpu else "digits/8", batch_size=256 if gpu else 64)
  config.optim.update(lr=1e-3, warmup_steps=100, schedule="cosine")
  steps = 3000 if gpu else LONG_STEPS if long else 600
  config.train.update(steps=steps, log_every=100, checkpoint_every=steps // 2,
                      sample_every=steps, ema_decay=0.999 if gpu else 0.995, ema_warmup=True,
                      samples_per_class=4)
  config.sample.update(method="heun", steps=12, cfg_scale=2.0)
  # Six evaluations a run: the compute ranges of neighbouring sizes overlap (Figure 8). `long`
  # evaluates at equal compute instead (get_sweep sets each run's at_steps).
  config.evals.samples = evaluator_section("samples", every=0 if long else steps // 6,
                                           num_samples=1000 if gpu else 300, batch_size=300)
  config.evals.loss_by_t = evaluator_section("loss_by_t", every=250 if gpu else 100,
                                             num_samples=256 if gpu else 128,
                                             batch_size=256 if gpu else 128)
  return config


def fd_steps(fields: dict) -> tuple[int, ...]:
  """`long`: the steps at which a run with `fields` reaches the training compute of
  LONG_FD_TFLOPS (from the Gflops the sweep report records for it)."""
  info = counts(set_fields(get_config("long"), fields))
  return compute_matched_steps(info["gflops"], info["batch_size"], info["steps"],
                               LONG_FD_TFLOPS, first=LONG_FD_FIRST)


def get_sweep(arg: str = ""):
  gpu, long = _variant(arg) == "gpu", arg == "long"
  sizes = GPU_SIZES if gpu else {k: v for k, v in SIZES.items() if k != "XL"}
  patches = (8, 4, 2) if gpu else (4, 2, 1)
  runs = {f"{size}/{p}": {"model.hidden_size": width, "model.depth": depth,
                          "model.num_heads": width // HEAD_DIM, "model.patch_size": p}
          for size, (width, depth) in sizes.items() for p in patches}
  if long:
    runs = {name: {**fields, "evals.samples.at_steps": fd_steps(fields)}
            for name, fields in runs.items()}
  losses = tuple(f"eval/loss_t={t:g}" for t in (0.05, 0.2, 0.5, 0.8, 0.95))
  return dict(
      title="Scaling with Gflops (DiT paper, Figures 2 and 8) on "
            + ("32x32 digits" if gpu else "8x8 digits") + (f", {LONG_STEPS} steps" if long else ""),
      description="DiT sizes with the S/B/L/XL ratios of width and depth, each at three patch "
                  "sizes; FD of EMA samples (uniform labels, Heun 12 steps, guidance 2) to the "
                  "test digits in the features of a digits classifier, "
                  + ("at equal training compute (powers of 2 Tflops) and at the end"
                     if long else "six times during training")
                  + "; loss_t=T: the loss at time T on fixed test digits and noise (EMA).",
      runs=runs, seeds=[0, 1],
      metrics=("eval/fd", "eval/accuracy", "loss", *losses))
