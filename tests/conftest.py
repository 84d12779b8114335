"""8 fake CPU devices for sharding tests; must run before JAX initialises its backends."""
import os

import pytest

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
