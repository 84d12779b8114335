"""A TFDS data_dir in a bucket (gs://, the emulator of tests/gcs_emulator.py): a bundled data
set prepared there (ArrayRecord writes local files only: built locally, uploaded), read back
by TFDS and grain exactly as from a local data_dir; clear errors instead of a hang or a
download."""
import numpy as np
import pytest

from dit_jax import data, paths
from dit_jax.errors import InputError


def test_a_bundled_data_set_prepared_in_a_bucket_reads_as_the_local_one(gcs_bucket, data_dir,
                                                                        tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  remote = f"{gcs_bucket}/tfds"
  data.prepare("digits/8", remote)
  assert sorted(paths.list_names(f"{remote}/digits/8")) == ["1.0.0"]  # no staging folder left
  assert {"dataset_info.json", "digits-train.array_record-00000-of-00001"} <= set(
      paths.list_names(f"{remote}/digits/8/1.0.0"))
  for got, want in zip(data.read_images("digits/8", "test", remote),
                       data.read_images("digits/8", "test", data_dir)):
    np.testing.assert_array_equal(got, want)
  config = dict(name="digits/8", split="train", batch_size=16)
  for index in (0, 1):  # each of two processes reads its own share, as from a local data_dir
    batches = [data.make_iterator(dict(config, data_dir=where), process_index=index,
                                  process_count=2) for where in (remote, data_dir)]
    for _ in range(2):
      got, want = next(batches[0]), next(batches[1])
      np.testing.assert_array_equal(got["image"], want["image"])
      np.testing.assert_array_equal(got["label"], want["label"])
  assert list(tmp_path.iterdir()) == []  # no local gs: folder


def test_a_bucket_data_dir_fails_clearly_where_it_cannot_work(gcs_bucket, monkeypatch):
  remote = f"{gcs_bucket}/tfds"
  with pytest.raises(FileNotFoundError, match=r"not prepared in gs://.*prepare it on a local "
                                              r"disk .* copy DIR/mnist to gs://"):
    data.make_iterator({"name": "mnist", "data_dir": remote}, process_count=1)
  # Against the emulator without ArrayRecord's endpoint a read would wait forever.
  monkeypatch.delenv("CLOUD_STORAGE_EMULATOR_ENDPOINT")
  with pytest.raises(InputError, match="also set CLOUD_STORAGE_EMULATOR_ENDPOINT"):
    data.read_images("digits/8", "test", remote)
