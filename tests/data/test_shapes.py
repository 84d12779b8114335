import dataclasses
import re

import numpy as np
import pytest

from dit_jax import data
from dit_jax.data import shapes

SMALL = data.ShapesConfig(name="small", resolution=15, min_objects=1, max_objects=9)
MULTI_64 = data.ShapesConfig(name="m", resolution=64, min_objects=1, max_objects=9)
SINGLE_32 = data.ShapesConfig(name="s", resolution=32)
FIXED_24 = data.ShapesConfig(name="f", resolution=24, min_objects=2, max_objects=3,
                             fixed_layout=True)


def template(shape: int, side: int) -> np.ndarray:
  """(side, side) bool mask of one shape drawn alone, to compare objects pixel for pixel."""
  obj = dict(shape=shape, colour=0, row=0, col=0, bbox=(0, 0, side, side))
  return (shapes.render([obj], max(side, 15)) == shapes.PALETTE[0]).all(-1)[:side, :side]


def parse_caption(text: str) -> list[tuple[str, str, str]]:
  parts = [re.fullmatch(r"a (\w+) (\w+) (.+)", p) for p in text.split(" and ")]
  assert all(parts), text
  return [p.groups() for p in parts]


def check(ex: dict, resolution: int):
  """Metadata, caption and pixels agree: every object is exactly its shape in its colour,
  centred in its stated cell, and everything else is background."""
  image, n, objs = ex["image"], int(ex["num_objects"]), ex["objects"]
  caption = ex["caption"].decode() if isinstance(ex["caption"], bytes) else ex["caption"]
  words = parse_caption(caption)
  assert len(words) == n
  covered = np.zeros(image.shape[:2], bool)
  for i in range(n):
    y0, x0, y1, x1 = objs["bbox"][i]
    shape, colour, row, col = (int(objs[k][i]) for k in ("shape", "colour", "row", "col"))
    mask = (image[y0:y1, x0:x1] == shapes.PALETTE[colour]).all(-1)
    np.testing.assert_array_equal(mask, template(shape, y1 - y0))
    assert all((mask != template(other, y1 - y0)).any() for other in range(3) if other != shape)
    cell = int((y0 + y1) / 2 * 3 // resolution), int((x0 + x1) / 2 * 3 // resolution)
    assert cell == (row, col)
    assert words[i] == (shapes.COLOUR_NAMES[colour], shapes.SHAPES[shape],
                        shapes.POSITIONS[row][col])
    covered[y0:y1, x0:x1] |= mask
  assert (image[~covered] == shapes.BACKGROUND).all()
  assert (objs["shape"][n:] == -1).all() and (objs["bbox"][n:] == -1).all()
  assert len({(r, c) for r, c in zip(objs["row"][:n], objs["col"][:n])}) == n  # one per cell


@pytest.mark.parametrize("config", [SMALL, SINGLE_32, MULTI_64, FIXED_24], ids=lambda c: c.name)
def test_generated_pixels_match_caption_and_metadata(config):
  for i in range(60):
    ex = shapes.example(config, "train", i)
    assert ex["image"].shape == (config.resolution, config.resolution, 3)
    assert config.min_objects <= ex["num_objects"] <= config.max_objects
    check(ex, config.resolution)


def test_examples_are_a_function_of_seed_split_and_index(tiny_multi):
  a = shapes.example(tiny_multi, "train", 5)
  np.testing.assert_array_equal(a["image"], shapes.example(tiny_multi, "train", 5)["image"])
  assert a["caption"] == shapes.example(tiny_multi, "train", 5)["caption"]
  others = [shapes.example(tiny_multi, "test", 5), shapes.example(tiny_multi, "train", 6),
            shapes.example(dataclasses.replace(tiny_multi, seed=4), "train", 5)]
  assert all(not np.array_equal(a["image"], o["image"]) for o in others)


def test_fixed_layout_image_is_a_function_of_the_caption():
  config = dataclasses.replace(FIXED_24, min_objects=1, max_objects=1)
  by_caption = {}
  for i in range(400):  # 162 possible captions: many repeat
    ex = shapes.example(config, "train", i)
    y0, x0, y1, x1 = ex["objects"]["bbox"][0]
    assert y1 - y0 == x1 - x0 == 6 and y0 % 8 == x0 % 8 == 1  # 80% of an 8 px cell, centred
    first = by_caption.setdefault(ex["caption"], ex["image"])
    np.testing.assert_array_equal(first, ex["image"])
  assert len(by_caption) < 200


def test_single_object_label_is_shape_times_colours_plus_colour(tiny_single):
  names = shapes.class_names()
  assert len(names) == 18 and names[1 * 6 + 2] == "blue square"
  for i in range(30):
    ex = shapes.example(tiny_single, "train", i)
    shape, colour = ex["objects"]["shape"][0], ex["objects"]["colour"][0]
    assert ex["label"] == shape * len(shapes.COLOURS) + colour
    assert ex["caption"].startswith(f"a {names[ex['label']]} ")


def test_prepared_splits_round_trip_exactly(data_dir, tiny_multi):
  builder = data.Shapes(config=tiny_multi, data_dir=data_dir)
  assert "label" not in builder.info.features
  for split, count in (("train", 48), ("test", 8)):
    source = builder.as_data_source(split)
    assert len(source) == count
    for i in range(0, count, 5):
      ex = source[i]
      assert ex["image"].dtype == np.uint8 and ex["objects"]["bbox"].shape == (3, 4)
      check(ex, tiny_multi.resolution)
  # TFDS stores examples in hashed order; all generated examples are there, PNG is lossless
  train = builder.as_data_source("train")
  stored = sorted(train[i]["caption"].decode() for i in range(len(train)))
  assert stored == sorted(shapes.example(tiny_multi, "train", i)["caption"] for i in range(48))


def test_prepared_single_config_has_class_labels(data_dir, tiny_single):
  source = data.Shapes(config=tiny_single, data_dir=data_dir).as_data_source("train")
  labels = [source[i]["label"] for i in range(len(source))]
  assert all(0 <= label < 18 for label in labels) and len(set(labels)) > 5
  assert source[0]["image"].shape == (24, 24, 3)


def test_named_configs_and_their_image_shapes():
  names = [c.name for c in data.Shapes.BUILDER_CONFIGS]
  assert names == ["single_32", "multi_32", "single_64", "multi_64", "multi_fixed_24"]
  assert data.image_shape({"name": "shapes/multi_64"}) == (64, 64, 3)
  assert data.image_shape({"name": "shapes/multi_fixed_24"}) == (24, 24, 3)
  fixed = data.Shapes.BUILDER_CONFIGS[-1]
  np.testing.assert_array_equal(  # the experiment's data: same generator, same examples
      shapes.example(fixed, "test", 3)["image"],
      shapes.example(dataclasses.replace(FIXED_24, name="multi_fixed_24"), "test", 3)["image"])


def test_too_small_resolution_is_rejected(tmp_path):
  bad = data.ShapesConfig(name="bad", resolution=12)
  with pytest.raises(ValueError, match="resolution >= 15"):
    data.Shapes(config=bad, data_dir=str(tmp_path)).info
