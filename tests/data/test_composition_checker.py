"""The exact checker of experiments/mmdit_composition.py: it must read every generated shape
of the captioned `shapes` data correctly, and a caption-blind image must fail it."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from dit_jax.data import shapes

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "mmdit_composition.py"


@pytest.fixture(scope="module")
def composition():
  spec = importlib.util.spec_from_file_location("mmdit_composition", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("resolution", [24, 32])
def test_classify_cell_reads_every_shape_colour_and_size(composition, resolution):
  config = shapes.ShapesConfig(name="t", resolution=resolution)
  (y0, y1), (x0, x1) = shapes.cell_bounds(1, resolution), shapes.cell_bounds(2, resolution)
  span = y1 - y0
  for side in range(max(4, round(0.6 * span)), round(0.9 * span) + 1):  # every drawn size
    for shape in range(len(shapes.SHAPES)):
      for colour in range(len(shapes.COLOURS)):
        obj = dict(shape=shape, colour=colour, row=1, col=2,
                   bbox=(y0, x0, y0 + side, x0 + side))
        cell = shapes.render([obj], config.resolution)[y0:y1, x0:x1]
        assert composition.classify_cell(cell, shapes.PALETTE) == (colour, shape), (side, obj)
  empty = np.zeros((span, span, 3), np.uint8)
  empty[0, :3] = shapes.PALETTE[0]  # 3 stray pixels: below min_pixels, so still empty
  assert composition.classify_cell(empty, shapes.PALETTE) == (-1, -1)


def test_check_scores_real_images_perfectly_and_wrong_captions_low(composition):
  data = composition.split_arrays("test", 64, 24, fixed_layout=False)
  scores = composition.check(data["test_images"], data)
  assert scores == dict(colour=1.0, shape=1.0, object=1.0, empty_cells=1.0, all_objects=1.0)
  blind = composition.check(np.roll(data["test_images"], 1, 0), data)
  assert blind["object"] < 0.3 and blind["all_objects"] < 0.05
  # One object recoloured: that image fails, the others still pass.
  broken = data["test_images"].copy()
  r, c, k = data["test_row"][0, 0], data["test_col"][0, 0], data["test_colour"][0, 0]
  (y0, y1), (x0, x1) = shapes.cell_bounds(r, 24), shapes.cell_bounds(c, 24)
  cell = broken[0, y0:y1, x0:x1]
  cell[np.all(cell == shapes.PALETTE[k], -1)] = shapes.PALETTE[(k + 1) % 6]
  scores = composition.check(broken, data)
  assert scores["all_objects"] == pytest.approx(63 / 64)
  assert scores["shape"] == 1.0 and scores["colour"] < 1.0


def test_paired_difference_separates_real_from_caption_blind(composition):
  data = composition.split_arrays("test", 64, 24, fixed_layout=True)
  real = composition.check_images(data["test_images"], data)
  blind = composition.check_images(np.roll(data["test_images"], 1, 0), data)
  assert real["objects"].sum() == (data["test_shape"] >= 0).sum()
  assert composition.paired_difference(real, real, "object") == (0.0, 0.0, 0.0)
  diff, lo, hi = composition.paired_difference(real, blind, "object")
  assert diff == pytest.approx(1.0 - composition.accuracies(blind)["object"])
  assert 0.85 < lo < diff < hi <= 1.0
  # An interval, not a point: half the images swapped for blind ones widen it around ~0.5.
  mixed = {key: np.where(np.arange(64) % 2 == 0, real[key], blind[key]) for key in real}
  diff, lo, hi = composition.paired_difference(mixed, blind, "object")
  assert 0.3 < lo < diff < hi < 0.7
