"""MM-DiT and its DiT baselines on the captioned shapes (the models of
configs/sweeps/mmdit_composition.py), and the published MM-DiT shapes for FLOP counts.

    dit-jax flops --config configs/mmdit.py:FLUX.1-dev        # 128x128x16 latents, T5 512
    dit-jax flops --config configs/mmdit.py:mmdit_hybrid --xla
    dit-jax train --config configs/mmdit.py:mmdit_double --workdir runs/mmdit_double

arg: a variant of VARIANTS, optionally '@gpu' for the larger size (e.g. 'mmdit_hybrid@gpu'), or
a published preset name (models.mmdit.PRESETS). Variant configs read shapes/multi_fixed_24 (the
data the composition checker of experiments/mmdit_composition.py scores against) with its
captions tokenized by the data pipeline (data.text_tokenizer).
"""
from pathlib import Path

from dit_jax.config import evaluator_section, load_config, model_section
from dit_jax.models.mmdit import PRESET_INPUT, PRESETS

TEXT_LENGTH = 24     # a 3-object shapes caption is at most 22 words with BOS
SHAPES_VOCAB = 23    # text.make_tokenizer('words:shapes').vocab_size (tests check it)
VARIANTS = ("dit_pooled", "dit_cross", "mmdit_double", "mmdit_single", "mmdit_hybrid")
# Depths per size so the forward FLOPs agree within ~10% (`dit-jax flops` lists them): a
# double-stream block costs about twice a DiT block, one with cross-attention about 1.3 times.
SIZES = {
    "cpu": dict(width=64, depths=dict(dit_pooled=7, dit_cross=5, mmdit_double=4,
                                      mmdit_single=4, mmdit_hybrid=(2, 2))),
    "gpu": dict(width=96, depths=dict(dit_pooled=8, dit_cross=7, mmdit_double=6,
                                      mmdit_single=6, mmdit_hybrid=(3, 3))),
}


def model_fields(variant: str, size: str = "cpu") -> dict:
  """config.model of one variant: patch 4, 4 heads and a 2-layer word-level text encoder."""
  if variant not in VARIANTS or size not in SIZES:
    raise ValueError(f"configs/mmdit.py: variant {variant!r} / size {size!r} must be one of "
                     f"{VARIANTS} / {tuple(SIZES)}")
  width, depth = SIZES[size]["width"], SIZES[size]["depths"][variant]
  fields = dict(patch_size=4, hidden_size=width, num_heads=4, text_source="tokens",
                vocab_size=SHAPES_VOCAB, text_length=TEXT_LENGTH, text_width=width,
                text_depth=2, text_heads=4, text_dropout_prob=0.1, learn_sigma=False)
  if variant.startswith("dit_"):
    conditioning = "pooled_adaln" if variant == "dit_pooled" else "cross_attn"
    return dict(fields, name="TextDiT", depth=depth, text_conditioning=conditioning)
  if variant == "mmdit_double":
    return dict(fields, name="MMDiT", depth_double=depth, depth_single=0)
  if variant == "mmdit_single":
    return dict(fields, name="MMDiT", depth_double=0, depth_single=depth,
                single_block="sequential")
  return dict(fields, name="MMDiT", depth_double=depth[0], depth_single=depth[1],
              single_block="parallel")


def get_config(arg: str = "mmdit_hybrid"):
  config = load_config(str(Path(__file__).with_name("quickstart.py")))
  del config.evals["samples"]  # it draws class labels; captions are checked below
  if arg in PRESETS:  # published shapes: for `dit-jax flops` (no weights, eval_shape only)
    config.model = model_section(arg, attention_backend="xla", scan_layers=True)
    side, _, channels = PRESET_INPUT[arg]
    config.data.update(name="imagenet2012", image_size=side * 8, latent_downsample=8,
                       latent_channels=channels)
    return config
  variant, _, size = arg.partition("@")
  # attention_backend='xla': what the recorded composition runs used
  config.model = model_section(**model_fields(variant, size or "cpu"), attention_backend="xla")
  config.data.update(name="shapes/multi_fixed_24", batch_size=64, text_tokenizer="words:shapes",
                     text_length=TEXT_LENGTH)
  config.optim.update(lr=1e-3, warmup_steps=200, schedule="cosine")
  config.train.update(steps=5000, sample_every=5000, samples_per_class=8)
  config.sample.update(method="euler", steps=40, cfg_scale=3.0)
  # The exact composition check of 256 test captions (the same noise at every evaluation).
  config.evals.composition = evaluator_section("composition", every=1000, num_samples=256)
  return config
