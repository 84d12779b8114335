"""8 fake CPU devices for sharding tests; must run before JAX initialises its backends."""
import os

import pytest

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture(scope="session")
def digits_net(tmp_path_factory):
  """(a fresh TFDS data dir with digits/8, the info of its classifier, trained briefly there)."""
  from dit_jax import data
  from dit_jax.eval import classifier
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  data.prepare("digits/8", data_dir)
  info = classifier.train_classifier("digits/8", data_dir, steps=300, log=lambda _: None)
  return data_dir, info
