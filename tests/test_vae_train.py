"""VAE training loss: PSNR closed form, the per-element reconstruction and KL terms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax import vae_train
from dit_jax.convert.vae import abstract_params
from dit_jax.models.vae import AutoencoderKL


def test_psnr_closed_form():
  x = jnp.zeros((2, 4, 4, 3))
  # a constant error of 0.1 on a peak-to-peak range of 2: 10 log10(4 / 0.01) = 26.02 dB
  np.testing.assert_allclose(vae_train.psnr(x, x + 0.1), 10 * np.log10(400.0), rtol=1e-5)


def test_loss_terms_are_per_element():
  vae = AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=(8, 8),
                      layers_per_block=1, latent_channels=2, norm_num_groups=4)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(np.float32),
                        abstract_params(vae))
  x = jnp.asarray(rng.uniform(-1, 1, (3, 8, 8, 1)), jnp.float32)
  key = jax.random.PRNGKey(0)
  recon, dist = jax.jit(lambda p: vae.apply({"params": p}, x, key))(params)
  loss_fn = jax.jit(lambda p, w: vae_train.vae_loss(p, vae, x, key, reconstruction="l2",
                                                    kl_weight=w))
  loss0, aux = loss_fn(params, 0.0)
  loss1, _ = loss_fn(params, 1.0)
  np.testing.assert_allclose(aux["rec"], np.mean((np.asarray(recon) - np.asarray(x)) ** 2),
                             rtol=1e-5)
  np.testing.assert_allclose(loss0, aux["rec"], rtol=1e-6)
  # KL summed over the latent, averaged over the batch, divided by the H*W*C = 64 pixels
  np.testing.assert_allclose(loss1 - loss0, np.mean(dist.kl()) / 64, rtol=1e-4)
  with pytest.raises(ValueError, match="vae_train.reconstruction"):
    vae_train.vae_loss(params, vae, x, key, reconstruction="l3", kl_weight=0.0)
