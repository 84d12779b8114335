import itertools
import json

import ml_collections
import numpy as np
import pytest
from sklearn.datasets import load_digits

from dit_jax import data
from dit_jax.data.pipeline import crop_resize

TRAIN = 1500  # digits/8 train examples


def config(data_dir, **overrides):
  return dict(dict(name="digits/8", data_dir=data_dir, batch_size=50, seed=0), **overrides)


def take(it, n):
  return [next(it) for _ in range(n)]


def test_batch_shapes_dtypes_and_values(data_dir):
  batch = next(data.make_iterator(config(data_dir, batch_size=32), process_count=1))
  assert batch["image"].shape == (32, 8, 8, 1) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
  assert batch["index"].dtype == np.int32  # numeric extra fields pass through
  assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
  assert batch["image"].min() == -1.0 and batch["image"].max() == 1.0
  digits = load_digits()  # pixels are (sklearn value * 255/16 rounded) / 127.5 - 1
  expected = np.round(digits.images[batch["index"]] * 255 / 16) / 127.5 - 1
  np.testing.assert_allclose(batch["image"][..., 0], expected, atol=1e-6)
  np.testing.assert_array_equal(batch["label"], digits.target[batch["index"]])


def test_resize_to_image_size(data_dir):
  batch = next(data.make_iterator(config(data_dir, batch_size=4, image_size=16)))  # JAX: 1 process
  assert batch["image"].shape == (4, 16, 16, 1)
  assert data.image_shape(config(data_dir, image_size=16)) == (16, 16, 1)
  assert data.image_shape(config(data_dir)) == (8, 8, 1)


def test_same_seed_same_batches_other_seed_other_batches(data_dir):
  a, b = (take(data.make_iterator(config(data_dir), process_count=1), 3) for _ in range(2))
  c = take(data.make_iterator(config(data_dir, seed=1), process_count=1), 3)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
  assert not np.array_equal(a[0]["index"], c[0]["index"])


def test_epochs_cover_the_split_and_are_reshuffled(data_dir):
  batches = take(data.make_iterator(config(data_dir), process_count=1), 2 * TRAIN // 50)
  first, second = (np.concatenate([b["index"] for b in half])
                   for half in (batches[:TRAIN // 50], batches[TRAIN // 50:]))
  assert sorted(first) == sorted(second) == list(range(TRAIN))
  assert not np.array_equal(first, second)
  unshuffled = take(data.make_iterator(config(data_dir, shuffle=False), process_count=1), 2)
  assert not np.array_equal(unshuffled[0]["index"], batches[0]["index"])


@pytest.mark.parametrize("process_count", [2, 7])
def test_processes_see_disjoint_shards_covering_an_epoch(data_dir, process_count):
  global_batch = 2 * process_count
  usable = TRAIN - TRAIN % process_count
  steps = usable // global_batch
  seen = []
  for p in range(process_count):
    it = data.make_iterator(config(data_dir, batch_size=global_batch), process_index=p,
                            process_count=process_count)
    batches = take(it, steps)
    assert batches[0]["image"].shape[0] == 2
    seen.append(np.concatenate([b["index"] for b in batches]))
  everything = np.concatenate(seen)
  assert len(set(everything)) == len(everything) == usable  # disjoint, and together an epoch


def test_restored_iterator_resumes_at_the_next_batch(data_dir):
  cfg = config(data_dir)
  for k in (3, TRAIN // 50 + 2):  # inside the first epoch and after an epoch boundary
    it = data.make_iterator(cfg, process_count=1)
    take(it, k)
    state = json.loads(json.dumps(it.get_state()))  # a checkpoint stores it as JSON
    expected = take(it, 2)
    fresh = data.make_iterator(cfg, process_count=1)
    fresh.set_state(state)
    for want, got in zip(expected, take(fresh, 2)):
      np.testing.assert_array_equal(want["index"], got["index"])
      np.testing.assert_array_equal(want["image"], got["image"])


def test_worker_processes_give_the_same_batches_and_restore(data_dir):
  threads = take(data.make_iterator(config(data_dir), process_count=1), 4)
  it = data.make_iterator(config(data_dir, worker_count=2), process_count=1)
  try:
    got = take(it, 3)
    state = it.get_state()
    got.append(next(it))
  finally:
    it.close()
  for want, have in zip(threads, got):
    np.testing.assert_array_equal(want["index"], have["index"])
  fresh = data.make_iterator(config(data_dir, worker_count=2), process_count=1)
  try:
    fresh.set_state(state)
    np.testing.assert_array_equal(next(fresh)["index"], threads[3]["index"])
  finally:
    fresh.close()


def test_reads_ml_collections_configs_and_ignores_other_fields(data_dir):
  cfg = ml_collections.ConfigDict(config(data_dir, batch_size=8))
  cfg.channels = 4  # a model-side field in the same section
  batch = next(data.make_iterator(cfg, process_count=1))
  assert batch["image"].shape == (8, 8, 8, 1)


@pytest.mark.parametrize("overrides, kwargs, message", [
    (dict(batch_size=10), dict(process_count=4), r"data.batch_size=10 .* divisible .* \(4\)"),
    (dict(batch_size=0), {}, "data.batch_size=0"),
    (dict(batch_size=2000), dict(process_count=1), "fewer than one batch"),
    ({}, dict(process_index=2, process_count=2), "process_index=2"),
    (dict(seed=-1), {}, "data.seed"),
    (dict(image_size=0), {}, "data.image_size"),
    (dict(name=None), {}, "data.name is required"),
    (dict(name="no_such_data_set"), {}, "data.name='no_such_data_set' is not a TFDS data set"),
])
def test_bad_configs_fail_early_naming_the_field(data_dir, overrides, kwargs, message):
  with pytest.raises(ValueError, match=message):
    data.make_iterator(config(data_dir, **overrides), **kwargs)


def test_crop_resize_takes_the_centre_square():
  image = np.zeros((20, 40, 3), np.uint8)
  image[:, 10:30] = 200  # the centred 20x20 square
  np.testing.assert_array_equal(crop_resize(image, 20), image[:, 10:30])
  small = crop_resize(image, 10)
  assert small.shape == (10, 10, 3) and (small == 200).all()
  gray = crop_resize(np.full((40, 20, 1), 7, np.uint8), 5)
  assert gray.shape == (5, 5, 1) and (gray == 7).all()


def test_iterator_follows_the_random_access_dataset(data_dir):
  """make_dataset is an endless MapDataset: batch k is computed on demand, in any epoch."""
  ds = data.make_dataset(config(data_dir), process_count=1)
  far = ds[10 * TRAIN // 50 + 1]
  assert far["image"].shape == (50, 8, 8, 1)
  it = data.make_iterator(config(data_dir), process_count=1)
  np.testing.assert_array_equal(next(itertools.islice(it, 3, None))["index"], ds[3]["index"])
