"""8 fake CPU devices for sharding tests; must run before JAX initialises its backends. A
Cloud Storage emulator for the gs:// tests, with every GCS client pointed at it from the start
(gcsfs and fsspec read part of that environment when imported; subprocesses inherit it)."""
import os

import pytest

import gcs_emulator  # tests/ is on sys.path (rootdir conftest)

GCS_PORT = gcs_emulator.free_port()
os.environ.update(gcs_emulator.environment(GCS_PORT))

# LLVM optimisation level 0: the suite is mostly XLA compiles of tiny models, which this makes
# about a third faster. Results match the optimised build to float32 rounding, not bit for bit
# (a DiT-S/2 gradient: max difference 2e-8); bit-exact tests compare runs of one process.
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""),
                                    "--xla_force_host_platform_device_count=8",
                                    "--xla_backend_optimization_level=0"]).strip()
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


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
  """The session's fake-gcs-server (objects in memory), started on first use (~50 ms)."""
  server = gcs_emulator.Emulator(GCS_PORT, tmp_path_factory.mktemp("gcs")).start()
  yield server
  server.stop()


@pytest.fixture
def gcs_bucket(gcs_server) -> str:
  """A fresh empty bucket of the emulator, as "gs://NAME"."""
  return gcs_server.create_bucket()
