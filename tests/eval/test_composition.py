"""The exact composition check (dit_jax.eval.composition): it must read every generated shape
of the captioned `shapes` data correctly, a caption-blind image must fail it, and the
experiment's paired bootstrap must separate the two."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from dit_jax.data import shapes
from dit_jax.eval import composition

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "mmdit_composition.py"


def examples(count: int, fixed_layout: bool):
  """(images, objects) of the first `count` 2-3 object test examples at 24x24."""
  config = shapes.ShapesConfig(name="t", resolution=24, min_objects=2, max_objects=3,
                               fixed_layout=fixed_layout)
  images = np.stack([shapes.example(config, "test", i)["image"] for i in range(count)])
  return images, composition.split_objects(config, "test", count)


@pytest.mark.parametrize("resolution", [24, 32])
def test_classify_cell_reads_every_shape_colour_and_size(resolution):
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


def test_check_scores_real_images_perfectly_and_wrong_captions_low():
  images, objects = examples(64, fixed_layout=False)
  assert list(objects["captions"][:2]) == [shapes.example(
      shapes.ShapesConfig(name="t", resolution=24, min_objects=2, max_objects=3), "test",
      i)["caption"] for i in range(2)]
  perfect = composition.accuracies(composition.check_images(images, objects))
  assert perfect == dict(colour=1.0, shape=1.0, object=1.0, empty_cells=1.0, all_objects=1.0)
  blind = composition.accuracies(composition.check_images(np.roll(images, 1, 0), objects))
  assert blind["object"] < 0.3 and blind["all_objects"] < 0.05
  # One object recoloured: that image fails, the others still pass.
  broken = images.copy()
  r, c, k = objects["row"][0, 0], objects["col"][0, 0], objects["colour"][0, 0]
  (y0, y1), (x0, x1) = shapes.cell_bounds(r, 24), shapes.cell_bounds(c, 24)
  cell = broken[0, y0:y1, x0:x1]
  cell[np.all(cell == shapes.PALETTE[k], -1)] = shapes.PALETTE[(k + 1) % 6]
  scores = composition.accuracies(composition.check_images(broken, objects))
  assert scores["all_objects"] == pytest.approx(63 / 64)
  assert scores["shape"] == 1.0 and scores["colour"] < 1.0


def test_unseen_captions_are_those_no_training_example_has():
  config = shapes.ShapesConfig(name="t", resolution=24, min_objects=1, max_objects=1,
                               num_train=200)
  train = [shapes.example(config, "train", i)["caption"] for i in range(config.num_train)]
  test = composition.split_objects(config, "test", 100)["captions"]
  unseen = composition.unseen(test, config)
  assert list(unseen) == [c not in set(train) for c in test]
  # 18 single-object captions x 9 cells = 162 possible; 200 draws leave about a third unseen
  assert 0 < unseen.sum() < 100
  assert not composition.unseen(train[:5], config).any()
  # The whole-image accuracy of the unseen captions is taken over those images only.
  images, objects = examples(4, fixed_layout=True)
  per_image = composition.check_images(np.concatenate([images[:2], images[:2]]), objects)
  scores = composition.scores(per_image, np.array([False, False, True, True]))
  assert scores["all_objects"] == pytest.approx(0.5) and scores["all_objects_unseen"] == 0.0


def test_paired_difference_separates_real_from_caption_blind():
  spec = importlib.util.spec_from_file_location("mmdit_composition", SCRIPT)
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  images, objects = examples(64, fixed_layout=True)
  real = composition.check_images(images, objects)
  blind = composition.check_images(np.roll(images, 1, 0), objects)
  assert real["objects"].sum() == (objects["shape"] >= 0).sum()
  assert script.paired_difference(real, real, "object") == (0.0, 0.0, 0.0)
  diff, lo, hi = script.paired_difference(real, blind, "object")
  assert diff == pytest.approx(1.0 - composition.accuracies(blind)["object"])
  assert 0.85 < lo < diff < hi <= 1.0
  # An interval, not a point: half the images swapped for blind ones widen it around ~0.5.
  mixed = {key: np.where(np.arange(64) % 2 == 0, real[key], blind[key]) for key in real}
  diff, lo, hi = script.paired_difference(mixed, blind, "object")
  assert 0.3 < lo < diff < hi < 0.7
