"""The exact composition check of samples of the captioned `shapes` data sets.

Shapes of the fixed-layout configs fill 80% of their grid cell, centred, in one palette colour,
so a sample can be read back cell by cell: the dominant palette colour of each cell and the
shape of its pixels (fill ratio of their bounding box: square ~1, circle ~0.785, triangle
~0.5) are compared with the caption's objects, and cells the caption leaves empty must stay
empty. This measures binding (the right colour and shape in the right place), which FD does
not. `split_objects` reads a split's captions and objects; `check_images` scores samples per
image and `accuracies` turns that into fractions. `composition_evaluator` is the training-time
evaluator of kind 'composition' (`dit_jax.eval.evaluators`).
"""
import jax
import numpy as np

from dit_jax.data import shapes
from dit_jax.data.tokenizers import caption_condition
from dit_jax.errors import InputError
from dit_jax.sampling.sampler import sample_in_batches

OBJECT_KEYS = ("shape", "colour", "row", "col")


def shapes_config(data_name: str) -> shapes.ShapesConfig:
  """The builder config of data.name 'shapes/NAME'."""
  family, _, name = data_name.partition("/")
  configs = {c.name: c for c in shapes.Shapes.BUILDER_CONFIGS}
  if family != "shapes" or name not in configs:
    raise InputError(f"data.name={data_name!r}: the composition check needs a shapes config, "
                     f"one of {sorted('shapes/' + n for n in configs)}")
  return configs[name]


def split_objects(config: shapes.ShapesConfig, split: str, count: int) -> dict[str, np.ndarray]:
  """The first `count` examples of `split`: 'captions' and the per-object arrays (shape,
  colour, row, col; padded with -1) that `check_images` reads."""
  examples = [shapes.example_objects(config, split, i) for i in range(count)]
  arrays = [shapes.object_arrays(objects, config.max_objects) for objects in examples]
  return {"captions": np.array([shapes.caption(objects) for objects in examples]),
          **{key: np.stack([a[key] for a in arrays]) for key in OBJECT_KEYS}}


def classify_cell(cell_HW3: np.ndarray, palette: np.ndarray, min_pixels: int = 4):
  """(colour id or -1, shape id or -1) of the dominant palette colour in a cell.

  Each pixel is assigned to the nearest of background + palette (within a distance of 96 of
  255-scale RGB; others count as noise); the shape of the dominant colour's pixels comes from
  the fill ratio of their bounding box.
  """
  refs = np.concatenate([np.zeros((1, 3)), palette.astype(np.float64)])
  dist = np.linalg.norm(cell_HW3[:, :, None, :].astype(np.float64) - refs, axis=-1)
  nearest = np.where(dist.min(-1) < 96, dist.argmin(-1), -1)  # 0 background, 1.. palette
  counts = np.bincount(nearest[nearest > 0].ravel(), minlength=len(refs))[1:]
  if counts.max(initial=0) < min_pixels:
    return -1, -1
  colour = int(counts.argmax())
  ys, xs = np.nonzero(nearest == colour + 1)
  fill = len(ys) / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
  shape = 1 if fill > 0.9 else (0 if fill > 0.66 else 2)  # SHAPES = circle, square, triangle
  return colour, shape


def check_images(samples: np.ndarray, objects: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Per-image counts of uint8 samples against `objects` (`split_objects`' arrays, image i for
  sample i): captioned objects, how many have the right colour / shape / both, empty cells and
  how many stayed empty, and whether the whole image is right."""
  n = min(len(samples), len(objects["shape"]))
  keys = ("objects", "colour", "shape", "object", "empty_total", "empty_cells", "all_objects")
  out = {key: np.zeros(n, np.int64) for key in keys}
  res = samples.shape[1]
  for i, img in enumerate(samples[:n]):
    wanted = {(int(r), int(c)): (int(s), int(k)) for s, k, r, c in zip(
        *(objects[key][i] for key in OBJECT_KEYS), strict=True) if s >= 0}
    for r in range(shapes.GRID):
      for c in range(shapes.GRID):
        (y0, y1), (x0, x1) = shapes.cell_bounds(r, res), shapes.cell_bounds(c, res)
        colour, shape = classify_cell(img[y0:y1, x0:x1], shapes.PALETTE)
        if (r, c) in wanted:
          s, k = wanted[(r, c)]
          out["objects"][i] += 1
          out["colour"][i] += colour == k
          out["shape"][i] += shape == s
          out["object"][i] += colour == k and shape == s
        else:
          out["empty_total"][i] += 1
          out["empty_cells"][i] += colour == -1
    out["all_objects"][i] = (out["object"][i] == out["objects"][i]
                             and out["empty_cells"][i] == out["empty_total"][i])
  return out


def accuracies(per_image: dict[str, np.ndarray], index=slice(None)) -> dict[str, float]:
  """Fractions of objects (colour, shape, object), empty cells and whole images that are right,
  over the images `index` selects."""
  sums = {key: float(np.sum(v[index])) for key, v in per_image.items()}
  return dict(colour=sums["colour"] / sums["objects"], shape=sums["shape"] / sums["objects"],
              object=sums["object"] / sums["objects"],
              empty_cells=sums["empty_cells"] / sums["empty_total"],
              all_objects=sums["all_objects"] / len(per_image["objects"][index]))


def unseen(captions, config: shapes.ShapesConfig) -> np.ndarray:
  """Which `captions` no training example of the shapes config has: a model that memorised
  captions fails these."""
  seen = {shapes.caption(shapes.example_objects(config, "train", i))
          for i in range(config.num_train)}
  return np.array([c not in seen for c in captions])


def scores(per_image: dict[str, np.ndarray], unseen_mask: np.ndarray) -> dict[str, float]:
  """`accuracies` of every image, and `all_objects_unseen`: the whole-image accuracy of the
  images whose caption `unseen_mask` marks (absent when there is none)."""
  out = accuracies(per_image)
  n = len(per_image["objects"])
  if unseen_mask[:n].any():
    out["all_objects_unseen"] = accuracies(per_image, unseen_mask[:n])["all_objects"]
  return out


def composition_evaluator(name: str, ec, run, log=print):
  """The first num_samples captions of the shapes data's `split`, sampled from the same noise
  at every evaluation (a learning curve of one sample set) and checked exactly."""
  config, keys = run.config, run.model.condition_keys
  if set(keys) != {"text_tokens", "text_mask"}:
    raise InputError(f"config.evals.{name}: a 'composition' evaluator feeds caption token ids "
                     f"(text_tokens, text_mask), but {config.model.name} reads {sorted(keys)}")
  if not config.data.text_tokenizer:
    raise InputError(f"config.evals.{name}: set config.data.text_tokenizer (e.g. "
                     "'words:shapes'), the tokenizer the model was trained with")
  data_config = shapes_config(config.data.name)
  if ec.split not in shapes.SPLIT_IDS:
    raise InputError(f"config.evals.{name}.split={ec.split!r}: a shapes data set has the splits "
                     f"{tuple(shapes.SPLIT_IDS)}")
  available = data_config.num_test if ec.split == "test" else data_config.num_train
  objects = split_objects(data_config, ec.split, min(ec.num_samples, available))
  unseen_mask = unseen(objects["captions"], data_config)
  cond = caption_condition(config.data, objects["captions"])
  sampler = run.sampler()

  def action(step, state):
    images = np.concatenate(list(sample_in_batches(
        sampler, state.ema_params, cond, min(ec.batch_size, len(objects["captions"])),
        jax.random.PRNGKey(config.seed + 3))))
    return scores(check_images(images, objects), unseen_mask)
  return action
