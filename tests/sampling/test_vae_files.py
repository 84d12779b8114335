"""The native VAE folder written by train-vae, and the diffusers fallback of --vae."""
import json
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from dit_jax import state_files
from dit_jax.convert import vae as convert
from dit_jax.models.vae import AutoencoderKL
from dit_jax.sampling import vae_files

VAE = AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=(8, 8), layers_per_block=1,
                    latent_channels=2, norm_num_groups=4, scaling_factor=0.5, shift_factor=0.25)


@pytest.fixture(scope="module")
def params():
  x = np.zeros((1, 8, 8, 1), np.float32)
  return jax.device_get(nn.unbox(VAE.init(jax.random.PRNGKey(0), x)["params"]))


def test_native_round_trip_is_exact_and_keeps_every_field(tmp_path, params):
  vae_files.save_vae(tmp_path / "vae", VAE, params)
  arch = json.loads((tmp_path / "vae" / vae_files.CONFIG).read_text())
  assert arch["scaling_factor"] == 0.5 and arch["shift_factor"] == 0.25
  for path in (tmp_path / "vae", tmp_path):  # the folder, or a train-vae workdir above it
    vae, loaded = vae_files.load_vae(path)
    assert vae == VAE
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
  assert vae_files.vae_dir(tmp_path) == tmp_path / "vae"


def test_a_diffusers_folder_goes_through_the_importer(tmp_path, params):
  convert.save_vae(tmp_path / "diffusers", VAE, params)
  vae, loaded = vae_files.load_vae(tmp_path / "diffusers")
  assert vae.latent_channels == 2 and vae.scaling_factor == 0.5
  jax.tree.map(np.testing.assert_array_equal, loaded, params)
  with pytest.raises(FileNotFoundError, match="no VAE there"):
    vae_files.vae_dir(tmp_path / "nothing")


def test_vae_training_does_not_import_the_converters():
  code = ("import sys, dit_jax.training.autoencoder; "
          "print(sorted(m for m in sys.modules if m.startswith('dit_jax.convert')))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"


def test_vae_folders_in_a_bucket_round_trip_as_local_ones(gcs_bucket, params, tmp_path,
                                                          monkeypatch):
  """Our folder (in a train-vae workdir) and a diffusers folder in a bucket: the same bytes as
  locally, loaded back exactly, found under the workdir; no local `gs:` folder."""
  monkeypatch.chdir(tmp_path)
  vae_files.save_vae(f"{gcs_bucket}/run/vae", VAE, params)
  vae_files.save_vae(tmp_path / "vae", VAE, params)
  for name in (vae_files.CONFIG, vae_files.WEIGHTS):
    assert state_files.read_bytes(f"{gcs_bucket}/run/vae/{name}") == (
        tmp_path / "vae" / name).read_bytes()
  for path in (f"{gcs_bucket}/run/vae", f"{gcs_bucket}/run"):
    vae, loaded = vae_files.load_vae(path)
    assert vae == VAE
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
  assert str(vae_files.vae_dir(f"{gcs_bucket}/run")) == f"{gcs_bucket}/run/vae"
  convert.save_vae(f"{gcs_bucket}/pipeline/vae", VAE, params)
  vae, loaded = vae_files.load_vae(f"{gcs_bucket}/pipeline")  # through the importer
  assert vae.scaling_factor == 0.5
  jax.tree.map(np.testing.assert_array_equal, loaded, params)
  assert str(vae_files.vae_dir(f"{gcs_bucket}/pipeline")) == f"{gcs_bucket}/pipeline/vae"
  assert [p.name for p in tmp_path.iterdir()] == ["vae"]
