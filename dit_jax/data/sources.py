"""TFDS data sets on disk: preparing them once as array_record, opening them for random access.

Bundled data sets (`digits`, `shapes`) are built from files inside installed packages or
generated, so preparing them never touches the network. Any other TFDS name is only opened,
never downloaded: prepare it yourself first (ImageNet: `prepare("imagenet2012", data_dir)`
with the tar files in `<data_dir>/downloads/manual/`; TFDS's ImageNet builder needs TensorFlow).
On several hosts sharing one data_dir, prepare once before training so hosts do not race.

A data_dir may be in a bucket (gs://): TFDS and grain read array_record files there (through
ArrayRecord's own GCS client). ArrayRecord cannot write to a bucket, so a bundled data set for
a gs:// data_dir is prepared in a local temporary folder and uploaded; other data sets are
prepared on a local disk and copied there by hand.
"""
import os
import tempfile
import uuid

import tensorflow_datasets as tfds

from dit_jax import paths
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
  with paths.remote_errors(b.data_dir):
    if b.is_prepared():
      return b
  if b.name not in BUNDLED and not b.MANUAL_DOWNLOAD_INSTRUCTIONS:
    raise InputError(f"{name} is not prepared in {b.data_dir} and preparing it here would "
                     f"download it: {_how_to_prepare(b, name)}")
  if paths.is_remote(b.data_dir):
    return _prepared_in_bucket(b, name, data_dir)
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


def _prepared_in_bucket(b: tfds.core.DatasetBuilder, name: str,
                        data_dir) -> tfds.core.DatasetBuilder:
  """Prepares bundled data set `name` for gs:// `data_dir`. ArrayRecord opens the files it
  writes locally ("open() failed: No such file or directory; opening gs://..."), so it is built
  in a local temporary folder, uploaded beside its place and moved in (server-side copies:
  the folder is incomplete for moments only, never left half-uploaded)."""
  if b.name not in BUNDLED:
    raise InputError(f"{name} is not prepared in {b.data_dir}, and TFDS cannot write "
                     f"array_record files to a bucket: {_how_to_prepare(b, name)}")
  final = paths.as_path(b.data_dir)
  staging = final.parent / f"incomplete.{uuid.uuid4().hex[:8]}_{final.name}"
  with tempfile.TemporaryDirectory(prefix="dit-jax-tfds-") as local:
    paths.upload_tree(_prepared(builder(name, local), name, local).data_dir, staging)
  paths.move_tree(staging, final)
  return builder(name, data_dir)


def _check_array_record_endpoint(data_dir):
  """Against a GCS emulator (STORAGE_EMULATOR_HOST), ArrayRecord reads gs:// through its own
  client, which only CLOUD_STORAGE_EMULATOR_ENDPOINT points there: without it a read waits
  for the real Cloud Storage forever. Say so instead of hanging."""
  if (data_dir and paths.is_remote(data_dir) and os.environ.get("STORAGE_EMULATOR_HOST")
      and not os.environ.get("CLOUD_STORAGE_EMULATOR_ENDPOINT")):
    raise InputError(f"data_dir={data_dir} is in a bucket of the emulator at "
                     f"STORAGE_EMULATOR_HOST={os.environ['STORAGE_EMULATOR_HOST']}, but "
                     "ArrayRecord reads through its own client, which would hang: also set "
                     "CLOUD_STORAGE_EMULATOR_ENDPOINT to that address")


def open_source(name: str, split: str, data_dir: str | None = None):
  """A random-access source (len, [i]) of decoded example dicts; bundled data sets are
  prepared on first use, others must be prepared already."""
  _check_array_record_endpoint(data_dir)
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
  if paths.is_remote(b.data_dir):
    return (f"prepare it on a local disk (dit_jax.data.prepare({name!r}, DIR), or `tfds build "
            f"{name} --file_format=array_record --data_dir=DIR`) and copy DIR/{b.name} to "
            f"{b.data_dir_root}/ (`gcloud storage cp -r`)")
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
