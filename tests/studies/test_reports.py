"""Rows of `dit-jax flops` as a library call: presets by name, a config's model, bad input."""
import pytest

from dit_jax.config import apply_overrides, load_config
from dit_jax.errors import InputError
from dit_jax.models import create_model
from dit_jax.models.dit import PRESETS, dit
from dit_jax.studies import reports


def test_model_names_complete_the_dit_prefix():
  assert reports.model_names("XL/2,DiT-B/4,") == ["DiT-XL/2", "DiT-B/4"]
  assert reports.model_names("all") == list(PRESETS) and len(PRESETS) == 12


def test_preset_rows_at_another_resolution_match_the_model_count():
  rows = reports.flops_rows("B/4,S/8", image_size=512, num_classes=10, learn_sigma=False)
  assert [r["model"] for r in rows] == ["DiT-B/4", "DiT-S/8"]
  b4 = dit("DiT-B/4", num_classes=10, learn_sigma=False)
  assert rows[0]["gflops"] == pytest.approx(sum(b4.forward_flops(64, 64, 4).values()) / 1e9)
  assert rows[0]["tokens"] == (64 // 4) ** 2 and rows[1]["tokens"] == (64 // 8) ** 2
  assert rows[0]["input"] == [64, 64, 4] and "paper_gflops" not in rows[0]
  # a pixel-space model: 3 channels, no downsampling
  pixel = reports.flops_rows("S/8", image_size=32, latent_downsample=1, channels=3)[0]
  assert pixel["input"] == [32, 32, 3] and pixel["tokens"] == 16


def test_the_row_of_a_config_is_that_of_its_model():
  overrides = ["model.conditioning=cross_attn", "model.depth=3"]
  [row] = reports.flops_rows(config="configs/dit.py:DiT-B/4", overrides=overrides)
  config = apply_overrides(load_config("configs/dit.py:DiT-B/4"), overrides)
  expected = reports.flops_row(create_model(config.model), config.model.name, 32, 32, 4)
  assert row == expected and row["conditioning"] == "cross_attn"


@pytest.mark.parametrize("kwargs,match", [
    (dict(overrides=["model.depth=2"]), r"--config\.\* overrides need --config"),
    (dict(image_size=250), "--image-size 250 is not divisible by --latent-downsample 8"),
    (dict(models="Q/2"), "unknown DiT model name 'DiT-Q/2'"),
])
def test_bad_requests_are_input_errors(kwargs, match):
  with pytest.raises(InputError, match=match):
    reports.flops_rows(**kwargs)
