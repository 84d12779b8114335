"""TFDS data sets on disk: preparing them once as array_record, opening them for random access.

Bundled data sets (`digits`, `shapes`) are built from files inside installed packages or
generated, so preparing them never touches the network. Any other TFDS name is only opened,
never downloaded: prepare it yourself first (ImageNet: `prepare("imagenet2012", data_dir)`
with the tar files in `<data_dir>/downloads/manual/`; TFDS's ImageNet builder needs TensorFlow).
On several hosts sharing one data_dir, prepare once before training so hosts do not race.
"""
import os

import tensorflow_datasets as tfds

from dit_jax.data.config import DataConfig
from dit_jax.data.digits import Digits
from dit_jax.data.shapes import Shapes
from dit_jax.errors import InputError, MissingFileError

BUNDLED = {cls.name: cls for cls in (Digits, Shapes)}  # registered with TFDS on import


def bundled_names() -> list[str]:
  """'digits/8', ..., 'shapes/single_32', ...: every bundled builder config."""
  return [f"{name}/{c.name}" for name, cls in BUNDLED.items() for c in cls.BUILDER_CONFIGS]


def builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """The TFDS builder for `name` ('digits/16', 'imagenet2012', ...); reads no data."""
  try:
    return tfds.builder(name, data_dir=os.fspath(data_dir) if data_dir else None)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise InputError(f"data.name={name!r} is not a TFDS data set; bundled ones: "
                     f"{', '.join(bundled_names())}") from e


def prepare(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """Writes `name` to `data_dir` as array_record once; a no-op when already there.

  Bundled data sets and those TFDS builds from a manual download (imagenet2012) only; others
  would fetch from the internet, which this library never does.
  """
  return _prepared(builder(name, data_dir), name, data_dir)


def _prepared(b: tfds.core.DatasetBuilder, name: str, data_dir) -> tfds.core.DatasetBuilder:
  if b.is_prepared():
    return b
  if b.name not in BUNDLED and not b.MANUAL_DOWNLOAD_INSTRUCTIONS:
    raise InputError(f"{name} is not prepared in {b.data_dir} and preparing it here would "
                     f"download it: {_how_to_prepare(b, name)}")
  try:
    b.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  except FileExistsError:
    # Another process (a side-by-side sweep worker) finished preparing it first: TFDS then
    # cannot move this process's copy into place. Theirs is the same data; read it.
    b = builder(name, data_dir)
    if not b.is_prepared():
      raise
  return b


def open_source(name: str, split: str, data_dir: str | None = None):
  """A random-access source (len, [i]) of decoded example dicts; bundled data sets are
  prepared on first use, others must be prepared already."""
  b = builder(name, data_dir)
  if b.name in BUNDLED:
    b = _prepared(b, name, data_dir)
  try:
    return b.as_data_source(split)
  except Exception as e:  # pylint: disable=broad-except
    if b.is_prepared():
      raise
    raise MissingFileError(f"data.name={name!r} is not prepared in {b.data_dir} "
                            f"(data.data_dir={data_dir!r}): {_how_to_prepare(b, name)}") from e


def _how_to_prepare(b: tfds.core.DatasetBuilder, name: str) -> str:
  if b.MANUAL_DOWNLOAD_INSTRUCTIONS:
    return (f"put the files TFDS asks for in {b.data_dir_root}/downloads/manual/ and run "
            f"dit_jax.data.prepare({name!r}, data_dir) once")
  return (f"build it as array_record where the network is allowed (`tfds build {name} "
          "--file_format=array_record --data_dir=DIR`) and set data.data_dir=DIR")


def image_shape(data_config) -> tuple[int, int, int]:
  """(H, W, C) of the images a pipeline yields, from the feature spec alone (no data read)."""
  cfg = DataConfig.from_config(data_config)
  features = builder(cfg.name, cfg.data_dir).info.features
  if "image" not in features:
    raise InputError(f"data.name={cfg.name!r} has no 'image' feature: {list(features)}")
  height, width, channels = features["image"].shape
  if cfg.image_size:
    return (cfg.image_size, cfg.image_size, channels)
  if height is None or width is None:
    raise InputError(f"data.image_size: {cfg.name} stores images of varying size "
                     f"{features['image'].shape}; set data.image_size to crop and resize them")
  return (height, width, channels)


def num_classes(data_config) -> int | None:
  """Classes of the data set's 'label' feature (a TFDS ClassLabel), from its info alone; None
  when it has no class labels. Training checks it against model.num_classes up front."""
  cfg = DataConfig.from_config(data_config)
  features = builder(cfg.name, cfg.data_dir).info.features
  return getattr(features["label"], "num_classes", None) if "label" in features else None
