"""Small data sets prepared once per session, with the network switched off while preparing."""
import socket

import pytest

from dit_jax import data



@pytest.fixture(scope="session")
def tiny_multi():
  return data.ShapesConfig(name="tiny_multi", resolution=32, min_objects=1, max_objects=3,
                           num_train=48, num_test=8, seed=3)


@pytest.fixture(scope="session")
def tiny_single():
  return data.ShapesConfig(name="tiny_single", resolution=24, num_train=40, num_test=8)


def _no_network(*args, **kwargs):
  raise AssertionError(f"preparing a bundled data set tried to use the network: {args}")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, tiny_multi, tiny_single):
  """A TFDS data dir holding digits/8 and two tiny shapes configs, built offline."""
  root = tmp_path_factory.mktemp("tfds")
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(socket.socket, "connect", _no_network)
    mp.setattr(socket, "getaddrinfo", _no_network)
    data.prepare("digits/8", str(root))
    for config in (tiny_multi, tiny_single):
      data.Shapes(config=config, data_dir=str(root)).download_and_prepare(
          file_format="array_record")
  return str(root)
