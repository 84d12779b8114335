"""A sampler drives a real (tiny) DiT through model_fn: learned variance, label guidance."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.flow import Sampler
from dit_jax.models.dit import dit

CLASSES = 3


def random_params(model, x, t, cond, seed=0):
  """Parameters of the right shapes filled with N(0, 0.1^2): away from the zero init, so both
  guidance branches differ, and without compiling the initialisers."""
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, cond))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(0.1 * rng.normal(size=s.shape), s.dtype), shapes)


def test_guided_sampling_of_a_tiny_dit_equals_two_separate_calls():
  model = dit("S/2", hidden_size=32, num_heads=2, depth=1, num_classes=CLASSES, learn_sigma=True)
  x0 = jnp.asarray(np.random.default_rng(1).normal(size=(4, 8, 8, 2)), jnp.float32)
  cond = {"label": jnp.arange(4) % CLASSES}
  null = {"label": jnp.full((4,), CLASSES)}  # the null class row of the label table
  params = random_params(model, x0, jnp.zeros(4), cond)

  sampler = Sampler("euler", steps=2)
  sample = jax.jit(lambda p, x0, s: sampler(
      lambda x, t, c: model.apply(p, x, t, c), None, x0, cond, null_cond=null, cfg_scale=s))
  ours = sample(params, x0, 4.0)

  apply = jax.jit(model.apply)
  x = x0
  for t in (0.0, 0.5):
    t_B = jnp.full((4,), t)
    u_cond, u_null = apply(params, x, t_B, cond)[..., :2], apply(params, x, t_B, null)[..., :2]
    x = x + 0.5 * (u_null + 4.0 * (u_cond - u_null))
  assert ours.shape == x0.shape and not np.allclose(ours, x0, atol=1e-2)
  np.testing.assert_allclose(ours, x, rtol=1e-4, atol=1e-4)
