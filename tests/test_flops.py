import pytest

from dit_jax.models import flops
from dit_jax.models.dit import CONDITIONINGS, PRESETS, dit
from dit_jax.studies.reports import flops_row

# Table 1 of the DiT paper (the lecture's table): patch 4 at 256x256, one decimal.
LECTURE_GFLOPS_P4 = {"DiT-S/4": 1.4, "DiT-B/4": 5.6, "DiT-L/4": 19.7, "DiT-XL/4": 29.1}


def gflops(model, h=32, w=32, c=4):
  return sum(flops.dit_flops(model, h, w, c).values()) / 1e9


@pytest.mark.parametrize("name", PRESETS)
def test_matches_paper_table(name):
  """Within the paper's printed rounding (0.005) plus 0.02%: see the README on conventions."""
  paper = flops.PAPER_GFLOPS_256[name]
  assert abs(gflops(dit(name)) - paper) <= 0.005 + 2e-4 * paper


def test_lecture_table_is_the_paper_rounded():
  for name, value in LECTURE_GFLOPS_P4.items():
    assert round(flops.PAPER_GFLOPS_256[name] + 1e-9, 1) == value
    assert gflops(dit(name)) == pytest.approx(value, abs=0.06)


def test_xl2_closed_form_by_hand():
  """12 L T D^2 (qkv, out, MLP) + 2 L T^2 D (scores, values) + adaLN + embeddings + final."""
  L, T, D, P = 28, 256, 1152, 2 * 2 * 4
  expected = (12 * L * T * D * D + 2 * L * T * T * D + (6 * L + 2) * D * D
              + T * P * D + 256 * D + D * D + T * D * 2 * P)
  assert sum(flops.dit_flops(dit("DiT-XL/2"), 32, 32, 4).values()) == expected


def test_xl2_512_matches_paper():
  assert gflops(dit("DiT-XL/2"), 64, 64) == pytest.approx(524.60, rel=1e-3)


def test_patch_halving_roughly_quadruples_flops():
  for size in ("S", "B", "L", "XL"):
    ratio = gflops(dit(f"DiT-{size}/2")) / gflops(dit(f"DiT-{size}/4"))
    assert 4.0 < ratio < 4.5  # 4x tokens, plus attention's T^2 term


def test_cross_attention_costs_about_15_percent_more():
  base = gflops(dit("DiT-XL/2"))
  assert 1.13 < gflops(dit("DiT-XL/2", conditioning="cross_attn")) / base < 1.18
  assert gflops(dit("DiT-XL/2", conditioning="in_context")) / base < 1.02


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
@pytest.mark.parametrize("num_classes,learn_sigma", [(0, False), (10, True)])
def test_analytic_params_equal_the_module(conditioning, num_classes, learn_sigma):
  model = dit("DiT-S/4", depth=3, conditioning=conditioning, num_classes=num_classes,
              learn_sigma=learn_sigma)
  assert sum(flops.dit_params(model, 3).values()) == flops.count_params(model, 16, 24, 3)


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_xla_cost_analysis_agrees(conditioning):
  """XLA counts 2 flops per multiply-add plus elementwise work: xla / 2 is slightly above."""
  model = dit("DiT-S/4", depth=4, conditioning=conditioning)
  analytic = sum(flops.dit_flops(model, 32, 32, 4).values())
  ratio = flops.xla_flops(model, 32, 32, 4) / 2 / analytic
  assert 1.0 < ratio < 1.02


def test_report_components_sum_to_total():
  row = flops_row(dit("DiT-B/2"), "DiT-B/2", 32, 32, 4)
  assert sum(row["gflops_by_component"].values()) == pytest.approx(row["gflops"])
  assert sum(row["params_by_component"].values()) == row["params"]
  assert row["gflops_by_component"]["mlp"] > row["gflops_by_component"]["attention"]
