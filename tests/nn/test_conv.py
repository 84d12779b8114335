"""Shared conv / GroupNorm helpers: the epsilon is honoured, and each family keeps its own
(U-Net 1e-5, diffusers' VAE 1e-6)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.models import vae as vae_lib
from dit_jax.models.unet import unet
from dit_jax.nn.conv import conv, group_norm


@pytest.mark.parametrize("eps", [1e-6, 1e-2])
def test_group_norm_matches_closed_form_with_its_epsilon(eps):
  x = 0.01 * jax.random.normal(jax.random.PRNGKey(0), (2, 3, 3, 8))  # variance ~ eps: it matters
  norm = group_norm(4, eps, "gn")
  y = norm.apply(norm.init(jax.random.PRNGKey(1), x), x)
  g = np.asarray(x, np.float64).reshape(2, 3, 3, 4, 2)
  mean, var = g.mean((1, 2, 4), keepdims=True), g.var((1, 2, 4), keepdims=True)
  np.testing.assert_allclose(y, ((g - mean) / np.sqrt(var + eps)).reshape(x.shape), rtol=1e-4,
                             atol=1e-5)


def test_conv_kernel_and_bias_carry_logical_names():
  layer = conv(6, 3, (None, None, "embed", "mlp"), name="c", dtype=jnp.float32,
               param_dtype=jnp.float32, stride=2)
  boxed = jax.eval_shape(layer.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 4)))["params"]
  assert boxed["kernel"].names == (None, None, "embed", "mlp")
  assert boxed["bias"].names == ("mlp",)
  x = jnp.zeros((1, 8, 8, 4))
  assert layer.apply(layer.init(jax.random.PRNGKey(0), x), x).shape == (1, 4, 4, 6)  # stride 2


def _group_norm_epsilons(module, *args, **kwargs):
  seen = set()

  def record(next_fun, args_, kwargs_, context):
    if isinstance(context.module, nn.GroupNorm):
      seen.add(context.module.epsilon)
    return next_fun(*args_, **kwargs_)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args, **kwargs))
  return seen


def test_each_family_keeps_its_group_norm_epsilon():
  model = unet("UNet-small", base_channels=8, num_groups=4, num_classes=0)
  assert _group_norm_epsilons(model, jnp.zeros((1, 8, 8, 1)), jnp.zeros(1)) == {1e-5}
  vae = vae_lib.vae_preset("tiny")
  assert _group_norm_epsilons(vae, jnp.zeros((1, 16, 16, 3))) == {1e-6}
