"""VAE: published parameter counts and latent shapes per preset, the KL closed form, the
posterior sample statistics, latent scaling, and config errors."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.models import vae as vae_lib


def _count(tree) -> int:
  return int(sum(np.prod(a.shape) for a in jax.tree.leaves(tree)))


@pytest.mark.parametrize("name, size, latent_shape, params, encoder, decoder", [
    # diffusers AutoencoderKL of SD 1.x/2.x: 83,653,863 = 34,163,592 + 49,490,179 + 72 + 20
    ("SD", 256, (32, 32, 4), 83_653_863, 34_163_592, 49_490_179),
    ("SDXL", 256, (32, 32, 4), 83_653_863, 34_163_592, 49_490_179),
    # 16 channels, no quant convs: encoder conv_out +110,616, decoder conv_in +55,296
    ("SD3", 256, (32, 32, 16), 83_819_683, 34_274_208, 49_545_475),
    ("FLUX", 128, (16, 16, 16), 83_819_683, 34_274_208, 49_545_475),
    ("tiny", 32, (8, 8, 4), 681_911, 258_712, 423_107),
])
def test_preset_shapes_and_parameter_counts(name, size, latent_shape, params, encoder, decoder):
  vae = vae_lib.vae_preset(name)
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: vae.init(jax.random.PRNGKey(0), x), x)
  p = nn.unbox(variables["params"])
  assert _count(p) == params
  assert (_count(p["encoder"]), _count(p["decoder"])) == (encoder, decoder)
  dist = jax.eval_shape(lambda v, x: vae.apply(v, x, method=vae.encode), variables, x)
  assert dist.mean.shape == dist.logvar.shape == (2, *latent_shape)
  z = jax.ShapeDtypeStruct((2, *latent_shape), jnp.float32)
  out = jax.eval_shape(lambda v, z: vae.apply(v, z, method=vae.decode), variables, z)
  assert out.shape == (2, size, size, 3)
  assert size // vae.downsample == latent_shape[0]


def test_kl_matches_per_dimension_formula():
  rng = np.random.default_rng(0)
  mean, logvar = rng.normal(size=(3, 2, 2, 4)), rng.normal(size=(3, 2, 2, 4))
  sigma = np.exp(0.5 * logvar)
  # KL(N(mu, s^2) || N(0, 1)) = -log s + (s^2 + mu^2) / 2 - 1/2, summed per example
  want = (-np.log(sigma) + (sigma**2 + mean**2) / 2 - 0.5).sum(axis=(1, 2, 3))
  got = vae_lib.LatentDist(jnp.asarray(mean), jnp.asarray(logvar)).kl()
  np.testing.assert_allclose(got, want, rtol=1e-5)
  zero = vae_lib.kl_to_standard_normal(jnp.zeros((1, 4)), jnp.zeros((1, 4)))
  np.testing.assert_allclose(zero, 0.0, atol=1e-7)


def test_sample_has_the_posterior_moments():
  dist = vae_lib.LatentDist(jnp.full((20_000, 2), 1.5), jnp.log(jnp.full((20_000, 2), 0.25)))
  z = dist.sample(jax.random.PRNGKey(0))
  np.testing.assert_allclose(z.mean(0), 1.5, atol=0.02)
  np.testing.assert_allclose(z.std(0), 0.5, atol=0.02)
  assert jnp.array_equal(dist.mode(), dist.mean)


def test_scaling_round_trip_and_published_factors():
  vae = vae_lib.vae_preset("FLUX")
  z = jnp.linspace(-3, 3, 7)
  np.testing.assert_allclose(vae.unscale_latents(vae.scale_latents(z)), z, rtol=1e-6)
  np.testing.assert_allclose(vae.scale_latents(jnp.float32(0.1159)), 0.0, atol=1e-7)
  assert vae_lib.vae_preset("SD").scaling_factor == 0.18215
  assert (vae.scaling_factor, vae.shift_factor) == (0.3611, 0.1159)
  sd3 = vae_lib.vae_preset("SD3")
  assert (sd3.scaling_factor, sd3.shift_factor) == (1.5305, 0.0609)


def test_logvar_is_clipped_and_mode_forward_is_deterministic():
  vae = vae_lib.AutoencoderKL(block_out_channels=(8,), layers_per_block=1, latent_channels=2,
                              norm_num_groups=4)
  x = jnp.ones((1, 4, 4, 3))
  shapes = nn.unbox(jax.eval_shape(vae.init, jax.random.PRNGKey(0), x)["params"])
  rng = np.random.default_rng(0)  # huge conv weights (random, no init: compiling init is slow)
  params = jax.tree.map(lambda s: 1e3 * rng.standard_normal(s.shape).astype(np.float32)
                        if len(s.shape) == 4 else np.ones(s.shape, np.float32), shapes)
  dist = jax.jit(lambda p: vae.apply({"params": p}, x, method=vae.encode))(params)
  assert float(dist.logvar.min()) == -30.0 and float(dist.logvar.max()) == 20.0
  forward = jax.jit(lambda p: vae.apply({"params": p}, x)[0])
  assert jnp.array_equal(forward(params), forward(params))


def test_every_kernel_has_logical_axes():
  vae = vae_lib.vae_preset("tiny")
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  boxed = jax.eval_shape(lambda x: vae.init(jax.random.PRNGKey(0), x), x)["params"]
  specs = nn.get_partition_spec(boxed)
  flat = jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda s: s is not None
                                             and not isinstance(s, dict))
  assert flat and all(spec is not None for _, spec in flat)
  kernel = lambda *path: tuple(functools.reduce(lambda d, k: d[k], path, specs)["kernel"])
  assert kernel("encoder", "conv_in") == (None, None, "patch", "mlp")  # RGB in, wide out
  assert kernel("encoder", "conv_out") == (None, None, "embed", "patch")  # moments out
  assert kernel("quant_conv") == (None, None, "patch", None)  # a name may appear once
  assert kernel("decoder", "up_blocks_0", "resnets_0", "conv1") == (None, None, "embed", "mlp")
  assert kernel("decoder", "mid_block", "attentions_0", "to_q") == ("embed", "mlp")


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match="norm_num_groups"):
    vae_lib.AutoencoderKL(block_out_channels=(24, 48), norm_num_groups=32).check_config()
  with pytest.raises(ValueError, match="downsampling factor 8"):
    vae_lib.vae_preset("SD").check_config(100, 100)
  with pytest.raises(ValueError, match="preset"):
    vae_lib.vae_preset("SD2")
  with pytest.raises(ValueError, match="does not take"):
    vae_lib.create_vae({"preset": "tiny", "channels": 3})
  vae = vae_lib.create_vae({"preset": "tiny", "latent_channels": 3, "dtype": "bfloat16"})
  assert vae.latent_channels == 3 and vae.dtype == jnp.bfloat16
  assert vae_lib.create_vae(vae_lib.vae_arch(vae)) == vae.clone(dtype=jnp.float32)


def test_mid_block_attention_memory_is_bounded_at_16384_tokens():
  """A 128x128 latent grid (a 1024 px image) through the backend switch ("auto": chunked on
  CPU) needs far less than the 1 GiB float32 score matrix; "xla" builds it."""
  block = vae_lib.AttentionBlock(groups=8)
  x = jax.ShapeDtypeStruct((1, 128, 128, 32), jnp.float32)
  variables = jax.eval_shape(block.init, jax.random.PRNGKey(0), x)
  temp = lambda b: (jax.jit(b.apply).lower(variables, x).compile().memory_analysis()
                    .temp_size_in_bytes)
  scores = (128 * 128) ** 2 * 4
  assert temp(block) < scores / 8
  assert temp(block.clone(attention_backend="xla")) >= scores


def test_mid_block_attention_backends_agree():
  block = vae_lib.AttentionBlock(groups=4, attention_backend="xla")
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 24, 24, 8))
  variables = block.init(jax.random.PRNGKey(1), x)
  ref = block.apply(variables, x)
  out = block.clone(attention_backend="chunked").apply(variables, x)  # 576 tokens: 2 chunks
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  assert float(jnp.abs(ref - x).max()) > 1e-3  # the attention path is not a no-op
