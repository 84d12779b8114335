"""VAE training loss: PSNR closed form, the per-element reconstruction and KL terms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.convert.vae import abstract_params
from dit_jax.models.vae import AutoencoderKL
from dit_jax.training import autoencoder


def test_psnr_closed_form():
  x = jnp.zeros((2, 4, 4, 3))
  # a constant error of 0.1 on a peak-to-peak range of 2: 10 log10(4 / 0.01) = 26.02 dB
  np.testing.assert_allclose(autoencoder.psnr(x, x + 0.1), 10 * np.log10(400.0), rtol=1e-5)


def test_loss_terms_are_per_element():
  vae = AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=(8, 8),
                      layers_per_block=1, latent_channels=2, norm_num_groups=4)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(np.float32),
                        abstract_params(vae))
  x = jnp.asarray(rng.uniform(-1, 1, (3, 8, 8, 1)), jnp.float32)
  key = jax.random.PRNGKey(0)
  recon, dist = jax.jit(lambda p: vae.apply({"params": p}, x, key))(params)
  loss_fn = jax.jit(lambda p, w: autoencoder.vae_loss(p, vae, x, key, reconstruction="l2",
                                                    kl_weight=w))
  loss0, aux = loss_fn(params, 0.0)
  loss1, _ = loss_fn(params, 1.0)
  np.testing.assert_allclose(aux["rec"], np.mean((np.asarray(recon) - np.asarray(x)) ** 2),
                             rtol=1e-5)
  np.testing.assert_allclose(loss0, aux["rec"], rtol=1e-6)
  # KL summed over the latent, averaged over the batch, divided by the H*W*C = 64 pixels
  np.testing.assert_allclose(loss1 - loss0, np.mean(dist.kl()) / 64, rtol=1e-4)
  with pytest.raises(ValueError, match="vae_train.reconstruction"):
    autoencoder.vae_loss(params, vae, x, key, reconstruction="l3", kl_weight=0.0)


def test_vae_training_runs_sharded_and_exports_what_it_trained(tmp_path):
  """train-vae on a (2, 2, 2) FSDP + tensor mesh: two steps equal the same steps on one
  device, and the exported diffusers folder loads back to the trained parameters."""
  import importlib.util

  from dit_jax import data, engine, parallel
  from dit_jax.models.vae import create_vae
  from dit_jax.sampling.vae_files import load_vae
  from dit_jax.training.autoencoder import train_vae, vae_task

  spec = importlib.util.spec_from_file_location("vae_config", "configs/vae.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  data_dir = str(tmp_path / "tfds")
  data.prepare("digits/8", data_dir)
  config.vae = dict(block_out_channels=(8, 16), layers_per_block=1, latent_channels=2,
                    norm_num_groups=4, in_channels=1, out_channels=1)
  config.data.update(name="digits/8", data_dir=data_dir, batch_size=8)
  config.train.update(steps=2, log_every=1, checkpoint_every=2)
  config.vae_train.update(eval_batches=1, auto_scale=False)
  config.mesh.update(data=2, fsdp=2, tensor=2, rules="fsdp_tp")
  vae, params = train_vae(config, tmp_path / "run")

  # The same two steps on one device, from the same data.
  optimizer, schedule = engine.make_optimizer(config.optim, 2)
  task = vae_task(create_vae(config.vae), (8, 8, 1), reconstruction="l2",
                  kl_weight=config.vae_train.kl_weight)
  state = jax.jit(lambda rng: engine.create_state(task, optimizer, rng, engine.EMA(0.0)))(
      jax.random.PRNGKey(config.seed))  # compiled once, as train_vae's sharded init is
  it = data.make_iterator(config.data)
  step = engine.make_step_fn(task, schedule)
  for _ in range(2):
    state, _ = step(state, {"image": jnp.asarray(next(it)["image"])})
  # Adam turns a gradient at rounding-noise level into a full +-lr step, so parameters whose
  # gradient is ~0 may differ by the two warm-up steps (lr <= 8e-5 here); the rest agree.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5,
                                                       atol=1e-4), params, state.params)
  plan = parallel.ShardingPlan.create(config.mesh)
  _, shardings = engine.state_shardings(vae_task(vae, (8, 8, 1), reconstruction="l2",
                                                kl_weight=0.0), optimizer, plan)
  assert any(not s.is_fully_replicated for s in jax.tree.leaves(shardings.params))
  _, loaded = load_vae(tmp_path / "run" / "vae")
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               loaded, jax.device_get(params))


def test_train_vae_summary_reads_what_training_wrote(tmp_path, monkeypatch):
  """The line `dit-jax train-vae` prints comes from the run's eval.json."""
  import json

  import ml_collections
  calls = []

  def fake_train(config, workdir):
    calls.append(workdir)
    (tmp_path / "eval.json").write_text(json.dumps(dict(psnr=31.234, scaling_factor=0.5)))
  monkeypatch.setattr(autoencoder, "train_vae", fake_train)
  config = ml_collections.ConfigDict(dict(vae_train=dict(eval_split="test")))
  line = autoencoder.train_vae_summary(config, str(tmp_path))
  assert calls == [str(tmp_path)] and line.startswith("trained in ")
  assert line.endswith(f"test PSNR 31.23 dB, scaling_factor 0.5; --vae {tmp_path} (the VAE "
                       f"folder is {tmp_path / 'vae'})")
