"""The same pipeline on any TFDS image data set, fed by TFDS's mock random-access sources."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from dit_jax import data


@pytest.fixture
def mock_tfds():
  """Random examples from each builder's feature spec; nothing read from disk or network."""
  with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
    yield


def test_imagenet_of_varying_sizes_is_cropped_and_resized(mock_tfds):
  cfg = dict(name="imagenet2012", batch_size=8, image_size=16, seed=0)
  assert data.image_shape(cfg) == (16, 16, 3)
  batch = next(data.make_iterator(cfg, process_count=1))
  assert set(batch) == {"image", "label"}  # the file_name text field is dropped
  assert batch["image"].shape == (8, 16, 16, 3) and batch["image"].dtype == np.float32
  assert -1 <= batch["image"].min() < batch["image"].max() <= 1
  assert batch["label"].dtype == np.int32
  assert ((0 <= batch["label"]) & (batch["label"] < 1000)).all()


def test_mnist_keeps_its_stored_size_and_shards_by_process(mock_tfds):
  cfg = dict(name="mnist", split="test", batch_size=4, seed=1)
  assert data.image_shape(cfg) == (28, 28, 1)
  halves = [next(data.make_iterator(cfg, process_index=p, process_count=2)) for p in (0, 1)]
  assert halves[0]["image"].shape == (2, 28, 28, 1)
  assert not np.array_equal(halves[0]["image"], halves[1]["image"])


def test_image_size_is_required_for_images_of_varying_size():
  with pytest.raises(ValueError, match="data.image_size"):
    data.image_shape({"name": "imagenet2012"})


def test_unprepared_data_set_says_how_to_prepare(tmp_path):
  with pytest.raises(FileNotFoundError, match="downloads/manual"):
    data.make_iterator({"name": "imagenet2012", "data_dir": str(tmp_path), "image_size": 16},
                       process_count=1)
  with pytest.raises(FileNotFoundError, match="tfds build mnist"):
    data.make_iterator({"name": "mnist", "data_dir": str(tmp_path)}, process_count=1)


def test_prepare_refuses_to_download(tmp_path):
  with pytest.raises(ValueError, match="would\\s+download"):
    data.prepare("mnist", str(tmp_path))
  assert not (tmp_path / "mnist").exists()
