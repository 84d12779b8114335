"""`shapes`: procedurally generated coloured shapes with captions, as a TFDS data set.

Each image is a black square with 1..K solid shapes (circle, square, triangle) in a 3x3 grid of
cells, at most one per cell, drawn without anti-aliasing so every object pixel is exactly its
palette colour. Example i of a split is a pure function of (config seed, split, i), so the data
set is the same on every machine and a checker can verify generated samples against the
stored metadata:

  caption      "a red circle at the top left and a blue square in the centre" (objects in
               reading order, joined with "and")
  objects/*    per-object shape id, colour id, cell row/col and pixel bbox [y0, x0, y1, x1)
               (end exclusive), padded to K entries with -1; `num_objects` says how many count
  label        single-object configs only: shape * len(COLOURS) + colour (18 classes)
"""
import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageDraw

from dit_jax.errors import InputError

SHAPES = ("circle", "square", "triangle")
COLOURS = {  # name -> RGB; saturated and far apart so a checker can match them exactly
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
    "yellow": (255, 255, 0), "magenta": (255, 0, 255), "cyan": (0, 255, 255)}
COLOUR_NAMES = tuple(COLOURS)
PALETTE = np.array(list(COLOURS.values()), np.uint8)  # (num_colours, 3)
BACKGROUND = (0, 0, 0)
GRID = 3  # cells per side
POSITIONS = (("at the top left", "at the top", "at the top right"),
             ("on the left", "in the centre", "on the right"),
             ("at the bottom left", "at the bottom", "at the bottom right"))
SPLIT_IDS = {"train": 0, "test": 1}
OBJECT_FIELDS = ("shape", "colour", "row", "col")  # per-object ints; `bbox` adds 4 per object


def class_names() -> list[str]:
  """Label names for single-object configs, index shape * len(COLOURS) + colour."""
  return [f"{c} {s}" for s in SHAPES for c in COLOUR_NAMES]


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
  resolution: int = 32   # image side in pixels; >= 15 so cells hold 4 px objects
  min_objects: int = 1
  max_objects: int = 1   # at most GRID * GRID
  num_train: int = 10_000
  num_test: int = 1_000
  seed: int = 0
  # Every object 80% of its cell and centred: the image is then a function of the caption, so
  # a generator's errors are binding errors (wrong colour/shape/place), not rendering ones.
  fixed_layout: bool = False


def cell_bounds(index: int, resolution: int) -> tuple[int, int]:
  """Pixel range [start, stop) of grid row/column `index`."""
  return round(index * resolution / GRID), round((index + 1) * resolution / GRID)


def sample_objects(rng: np.random.Generator, config: ShapesConfig) -> list[dict]:
  """Random objects in distinct cells, in reading order; each side 60-90% of its cell (80%
  and centred with `fixed_layout`) and at least 4 px, where the three shapes still differ in
  several pixels."""
  count = int(rng.integers(config.min_objects, config.max_objects + 1))
  cells = np.sort(rng.choice(GRID * GRID, size=count, replace=False))
  objects = []
  for cell in cells:
    row, col = divmod(int(cell), GRID)
    (y_lo, y_hi), (x_lo, x_hi) = (cell_bounds(row, config.resolution),
                                  cell_bounds(col, config.resolution))
    span = min(y_hi - y_lo, x_hi - x_lo)
    if config.fixed_layout:
      side = max(4, round(0.8 * span))
      y0, x0 = y_lo + (y_hi - y_lo - side) // 2, x_lo + (x_hi - x_lo - side) // 2
    else:
      side = int(rng.integers(max(4, round(0.6 * span)), max(4, round(0.9 * span)) + 1))
      y0 = y_lo + int(rng.integers(0, y_hi - y_lo - side + 1))
      x0 = x_lo + int(rng.integers(0, x_hi - x_lo - side + 1))
    objects.append(dict(shape=int(rng.integers(len(SHAPES))),
                        colour=int(rng.integers(len(COLOURS))),
                        row=row, col=col, bbox=(y0, x0, y0 + side, x0 + side)))
  return objects


def render(objects: list[dict], resolution: int) -> np.ndarray:
  """Draws the objects on the background: (resolution, resolution, 3) uint8."""
  image = Image.new("RGB", (resolution, resolution), BACKGROUND)
  draw = ImageDraw.Draw(image)
  for obj in objects:
    y0, x0, y1, x1 = obj["bbox"]
    box = (x0, y0, x1 - 1, y1 - 1)  # PIL boxes include their last pixel
    fill = tuple(int(v) for v in PALETTE[obj["colour"]])
    if SHAPES[obj["shape"]] == "circle":
      draw.ellipse(box, fill=fill)
    elif SHAPES[obj["shape"]] == "square":
      draw.rectangle(box, fill=fill)
    else:  # apex at the top centre, base along the bottom edge
      draw.polygon([((x0 + x1 - 1) / 2, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=fill)
  return np.asarray(image)


def caption(objects: list[dict]) -> str:
  """'a red circle at the top left and a blue square in the centre'."""
  return " and ".join(
      f"a {COLOUR_NAMES[o['colour']]} {SHAPES[o['shape']]} {POSITIONS[o['row']][o['col']]}"
      for o in objects)


def object_arrays(objects: list[dict], max_objects: int) -> dict[str, np.ndarray]:
  """Per-object fields as fixed-size int32 arrays padded with -1, so examples batch."""
  out = {k: np.full((max_objects,), -1, np.int32) for k in OBJECT_FIELDS}
  out["bbox"] = np.full((max_objects, 4), -1, np.int32)
  for i, obj in enumerate(objects):
    for k in out:
      out[k][i] = obj[k]
  return out


def example_objects(config: ShapesConfig, split: str, index: int) -> list[dict]:
  """The objects of example `index` of `split`, a pure function of (config.seed, split, index)."""
  return sample_objects(np.random.default_rng((config.seed, SPLIT_IDS[split], index)), config)


def example(config: ShapesConfig, split: str, index: int) -> dict:
  """Example `index` of `split`: its objects (`example_objects`) drawn and captioned."""
  objects = example_objects(config, split, index)
  ex = {"image": render(objects, config.resolution), "caption": caption(objects),
        "num_objects": len(objects), "objects": object_arrays(objects, config.max_objects)}
  if config.max_objects == 1:
    ex["label"] = objects[0]["shape"] * len(COLOURS) + objects[0]["colour"]
  return ex


def _config(name, resolution, min_objects, max_objects, description, fixed_layout=False):
  return ShapesConfig(name=name, resolution=resolution, min_objects=min_objects,
                      max_objects=max_objects, description=description,
                      fixed_layout=fixed_layout)


class Shapes(tfds.core.GeneratorBasedBuilder):
  """Coloured circles, squares and triangles on a 3x3 grid, with captions and metadata."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      _config("single_32", 32, 1, 1, "one object, 32x32, class label = shape * 6 + colour"),
      _config("multi_32", 32, 2, 3, "two or three objects, 32x32"),
      _config("single_64", 64, 1, 1, "one object, 64x64, class label = shape * 6 + colour"),
      _config("multi_64", 64, 2, 3, "two or three objects, 64x64"),
      _config("multi_fixed_24", 24, 2, 3, "two or three objects, 24x24, each 80% of its cell "
              "and centred: the image is a function of the caption", fixed_layout=True),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    if c.resolution < 15 or not 1 <= c.min_objects <= c.max_objects <= GRID * GRID:
      raise InputError(f"shapes config {c.name!r}: need resolution >= 15 and "
                       f"1 <= min_objects <= max_objects <= {GRID * GRID}, got {c}")
    k = c.max_objects
    features = {
        "image": tfds.features.Image(shape=(c.resolution, c.resolution, 3)),
        "caption": tfds.features.Text(),
        "num_objects": np.int32,
        "objects": tfds.features.FeaturesDict({
            name: tfds.features.Tensor(shape=(k, 4) if name == "bbox" else (k,), dtype=np.int32)
            for name in (*OBJECT_FIELDS, "bbox")}),
    }
    if k == 1:
      features["label"] = tfds.features.ClassLabel(names=class_names())
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__, features=tfds.features.FeaturesDict(features),
        supervised_keys=("image", "label") if k == 1 else None)

  def _split_generators(self, dl_manager):
    del dl_manager  # generated, nothing to download
    c = self.builder_config
    return {"train": self._generate_examples("train", c.num_train),
            "test": self._generate_examples("test", c.num_test)}

  def _generate_examples(self, split, count):
    for i in range(count):
      ex = example(self.builder_config, split, i)
      # A PIL image is PNG-encoded by TFDS without TensorFlow (numpy arrays would need TF).
      yield i, {**ex, "image": Image.fromarray(ex["image"])}
