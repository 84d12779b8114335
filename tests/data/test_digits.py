import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

from dit_jax import data
from dit_jax.data.digits import NUM_TRAIN, resize_gray


def test_splits_shapes_dtypes_and_labels(data_dir):
  train, test = (tfds.data_source("digits/8", split=s, data_dir=data_dir, download=False)
                 for s in ("train", "test"))
  assert (len(train), len(test)) == (NUM_TRAIN, 1797 - NUM_TRAIN)
  ex = train[0]
  assert ex["image"].shape == (8, 8, 1) and ex["image"].dtype == np.uint8
  labels = np.array([train[i]["label"] for i in range(len(train))])
  assert set(labels) == set(range(10))
  indices = [s[i]["index"] for s in (train, test) for i in range(len(s))]
  assert sorted(indices) == list(range(1797))  # disjoint splits covering the file
  assert max(test[i]["index"] for i in range(len(test))) == 1796
  assert min(test[i]["index"] for i in range(len(test))) == NUM_TRAIN


def test_pixels_are_sklearn_values_rescaled_to_uint8(data_dir):
  digits = load_digits()
  source = data.open_source("digits/8", "train", data_dir)
  for i in range(0, len(source), 97):
    ex = source[i]
    expected = np.round(digits.images[ex["index"]] * 255 / 16)
    np.testing.assert_array_equal(ex["image"][..., 0], expected)
    assert ex["label"] == digits.target[ex["index"]]
  assert max(source[i]["image"].max() for i in range(50)) == 255  # 16 -> 255


def test_prepare_is_a_noop_once_prepared(data_dir):
  builder = data.prepare("digits/8", data_dir)
  files = sorted(os.fspath(f) for f in builder.data_path.iterdir())
  stamps = [os.stat(f).st_mtime_ns for f in files]
  data.prepare("digits/8", data_dir)
  assert [os.stat(f).st_mtime_ns for f in files] == stamps


def test_a_data_set_another_process_prepared_first_is_read(data_dir, monkeypatch):
  """Side-by-side sweep workers prepare a bundled data set at the same time; TFDS fails to
  move the slower one's copy into place (FileExistsError). That one must read the other's."""
  from dit_jax.data import sources
  late = sources.builder("digits/8", data_dir)  # checked before the other process finished
  monkeypatch.setattr(late, "is_prepared", lambda: False)

  def destination_exists(**kwargs):
    raise FileExistsError("Cannot rename incomplete.XYZ_1.0.0: destination 1.0.0 exists")
  monkeypatch.setattr(late, "download_and_prepare", destination_exists)
  read = sources._prepared(late, "digits/8", data_dir)
  assert read is not late and read.is_prepared()
  assert len(read.as_data_source("train")) == NUM_TRAIN
  empty = str(data_dir) + "_empty"  # nobody prepared it there: the error stands
  late = sources.builder("digits/8", empty)
  monkeypatch.setattr(late, "download_and_prepare", destination_exists)
  with pytest.raises(FileExistsError):
    sources._prepared(late, "digits/8", empty)


def test_resize_keeps_strokes_and_brightness():
  image = np.zeros((8, 8), np.uint8)
  image[2:6, 3:5] = 255
  assert resize_gray(image, 8).shape == (8, 8, 1)
  np.testing.assert_array_equal(resize_gray(image, 8)[..., 0], image)
  big = resize_gray(image, 32)[..., 0]
  assert big.shape == (32, 32) and big.dtype == np.uint8
  assert big[16, 16] == 255 and big[0, 0] == 0
  np.testing.assert_allclose(big.mean(), image.mean(), rtol=0.1)


def test_builder_configs_name_resolutions():
  assert [c.name for c in data.Digits.BUILDER_CONFIGS] == ["8", "16", "32"]
  assert data.image_shape({"name": "digits/32"}) == (32, 32, 1)
