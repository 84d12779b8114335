"""MM-DiT and text-conditioned DiT: joint attention, padding and permutation invariances,
caption dependence after training on shapes, and the published configs' parameter counts."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dit_jax import flow
from dit_jax.data import shapes
from dit_jax.data.tokenizers import make_tokenizer
from dit_jax.models import contract, create_model, example_condition, model_fn
from dit_jax.models.mmdit import PRESET_INPUT, PUBLISHED_PARAMS, MMDiT, TextDiT, mmdit
from dit_jax.models.mmdit_blocks import DoubleStreamBlock
from dit_jax.models.text_encoder import text_positions
from dit_jax.nn.attention import joint_attention

RES, S = 24, 24
TOK = make_tokenizer("words:shapes")
SMALL = dict(patch_size=8, hidden_size=32, num_heads=2, vocab_size=TOK.vocab_size,
             text_length=S, text_width=16, text_depth=1, text_heads=2)
VARIANTS = {
    "pooled_adaln": lambda **kw: TextDiT(depth=1, text_conditioning="pooled_adaln", **kw),
    "cross_attn": lambda **kw: TextDiT(depth=1, text_conditioning="cross_attn", **kw),
    "double": lambda **kw: MMDiT(depth_double=1, **kw),  # its text stream: keys/values only
    "single": lambda **kw: MMDiT(depth_double=0, depth_single=1, single_block="sequential", **kw),
    "hybrid": lambda **kw: MMDiT(depth_double=1, depth_single=1, single_block="parallel", **kw),
}


def shapes_batch(n=4, seed=0):
  config = shapes.ShapesConfig(name="t", resolution=RES, min_objects=2, max_objects=3, seed=seed)
  exs = [shapes.example(config, "train", i) for i in range(n)]
  x = jnp.asarray(np.stack([e["image"] for e in exs]), jnp.float32) / 127.5 - 1
  tokens, mask = TOK.encode_batch([e["caption"] for e in exs], S)
  return x, {"text_tokens": jnp.asarray(tokens), "text_mask": jnp.asarray(mask)}


def perturbed(params, scale=0.1, seed=1):
  """Parameters moved off their zero init, so every path carries signal."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: p + scale * rng.normal(size=p.shape).astype(np.float32), params)


def numpy_attention(q, k, v, mask):
  logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
  logits = np.where(mask[:, None, None, :], logits, -np.inf)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  return np.einsum("bnts,bsnh->btnh", p / p.sum(-1, keepdims=True), v)


def test_joint_attention_equals_attention_over_concatenation():
  rng = np.random.default_rng(0)
  streams = [tuple(rng.normal(size=(2, L, 2, 8)).astype(np.float32) for _ in range(3))
             for L in (5, 7)]
  mask = np.ones((2, 12), bool)
  mask[0, 3:5] = False  # two padded text keys in example 0
  outs = joint_attention(streams, jnp.asarray(mask))
  q, k, v = (np.concatenate([s[i] for s in streams], 1) for i in range(3))
  want = numpy_attention(q, k, v, mask)
  np.testing.assert_allclose(np.concatenate(outs, 1), want, atol=1e-5)
  assert [o.shape[1] for o in outs] == [5, 7]


def test_double_block_is_identity_at_init():
  rng = np.random.default_rng(0)
  img, txt = (jnp.asarray(rng.normal(size=(2, L, 16)), jnp.float32) for L in (6, 4))
  vec, mask = jnp.ones((2, 16)), jnp.ones((2, 10), bool)
  block = DoubleStreamBlock(num_heads=2)
  v = jax.jit(block.init)(jax.random.PRNGKey(0), img, txt, vec, None, mask)
  out_img, out_txt = jax.jit(block.apply)(v, img, txt, vec, None, mask)
  np.testing.assert_array_equal(out_img, img)
  np.testing.assert_array_equal(out_txt, txt)


class Trained(dict):
  """name -> (model, params, losses) of each variant after 3 Adam steps on a shapes batch,
  trained on first use: a process that runs only some of the tests below trains only their
  variants (under pytest-xdist the tests of this module may be split across workers)."""

  def __missing__(self, name):
    x, cond = shapes_batch()
    objective = flow.make_objective({"kind": "flow"})
    model = VARIANTS[name](**SMALL)
    params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), x, jnp.zeros(4), cond))["params"]
    opt = optax.adam(1e-2)

    @jax.jit
    def step(params, opt_state, i):
      loss_fn = lambda p: objective.loss(
          model_fn(model, p, train=True, rng=jax.random.PRNGKey(7)),
          jax.random.PRNGKey(i % 2), x, cond)[0]
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = opt.update(grads, opt_state)
      return optax.apply_updates(params, updates), opt_state, loss

    opt_state, losses = opt.init(params), []
    for i in range(3):
      params, opt_state, loss = step(params, opt_state, i)
      losses.append(float(loss))
    self[name] = (model, params, losses)
    return self[name]


@pytest.fixture(scope="module")
def trained():
  return Trained()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_trains_and_output_depends_on_caption(trained, name):
  model, params, losses = trained[name]
  assert np.all(np.isfinite(losses))
  assert losses[2] < losses[0]  # the same (noise, t) draw at steps 0 and 2
  x, cond = shapes_batch()
  other = {k: v[::-1] for k, v in cond.items()}  # the same images with other captions
  apply = jax.jit(lambda c: model.apply({"params": params}, x, jnp.full((4,), 0.5), c))
  diff = np.abs(np.asarray(apply(cond)) - np.asarray(apply(other))).max()
  assert diff > 1e-4  # exactly 0 if the caption could not reach the image


@pytest.mark.parametrize("name", ["cross_attn", "double", "hybrid"])
def test_padded_text_tokens_do_not_change_image_outputs(trained, name):
  model, params, _ = trained[name]
  params = perturbed(params)
  x, cond = shapes_batch()
  rng = np.random.default_rng(0)
  garbage = np.where(np.asarray(cond["text_mask"]), np.asarray(cond["text_tokens"]),
                     rng.integers(3, TOK.vocab_size, size=cond["text_tokens"].shape))
  longer = {k: jnp.pad(v, ((0, 0), (0, 5))) for k, v in cond.items()}  # more padding
  jitted = jax.jit(lambda c: model.apply({"params": params}, x, jnp.full((4,), 0.3), c))
  apply = lambda c: np.asarray(jitted(c))
  want = apply(cond)
  np.testing.assert_allclose(apply(dict(cond, text_tokens=jnp.asarray(garbage))), want,
                             atol=1e-5)
  np.testing.assert_allclose(apply(longer), want, atol=1e-5)


@pytest.mark.parametrize("source", ["tokens", "embeddings"])
def test_permuting_text_with_its_position_ids_leaves_image_unchanged(source):
  kw = dict(SMALL, text_source=source, context_dim=8, pooled_dim=4 if source != "tokens" else 0)
  model = MMDiT(depth_double=1, depth_single=1, **kw)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, RES, RES, 3)), jnp.float32)
  if source == "tokens":
    cond = {"text_tokens": jnp.asarray(rng.integers(3, TOK.vocab_size, (2, S)), jnp.int32),
            "text_mask": jnp.asarray(np.arange(S) < [[9], [S]])}
  else:
    cond = {"text": jnp.asarray(rng.normal(size=(2, S, 8)), jnp.float32),
            "text_mask": jnp.asarray(np.arange(S) < [[9], [S]]),
            "pooled": jnp.asarray(rng.normal(size=(2, 4)), jnp.float32)}
  cond["text_ids"] = text_positions(cond["text_mask"])
  variables = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), x, jnp.zeros(2), cond))
  variables = perturbed(variables)
  perm = rng.permutation(S)
  permuted = {k: (v[:, perm] if k != "pooled" else v) for k, v in cond.items()}
  apply = jax.jit(lambda c: model.apply(variables, x, jnp.full((2,), 0.4), c))
  want = np.asarray(apply(cond))
  np.testing.assert_allclose(np.asarray(apply(permuted)), want, atol=1e-4)
  # Permuting the tokens alone (ids kept) changes a RoPE model's output: the test can fail.
  alone = dict(permuted, text_ids=cond["text_ids"])
  assert np.abs(np.asarray(apply(alone)) - want).max() > 1e-4


def test_null_condition_is_the_empty_caption_and_cond_none_means_it(trained):
  model, params, _ = trained["double"]
  x, cond = shapes_batch()
  null = model.null_condition(cond)
  np.testing.assert_array_equal(null["text_mask"].sum(1), [1, 1, 1, 1])
  np.testing.assert_array_equal(null["text_tokens"][:, 0], contract.BOS)
  np.testing.assert_array_equal(null["text_tokens"][:, 1:], contract.PAD)
  jitted = jax.jit(lambda c: model.apply({"params": params}, x, jnp.full((4,), 0.5), c))
  apply = lambda c: np.asarray(jitted(c))
  np.testing.assert_allclose(apply(None), apply(null), atol=1e-6)
  assert np.abs(apply(cond) - apply(null)).max() > 1e-4


def test_every_parameter_has_logical_axis_names():
  model = VARIANTS["hybrid"](**SMALL)
  x, cond = shapes_batch(2)
  boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, jnp.zeros(2), cond)["params"]
  leaves = jax.tree.leaves(boxed, is_leaf=lambda l: isinstance(l, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(l, nn.LogicallyPartitioned) for l in leaves)
  assert all(len(l.names) == len(l.value.shape) for l in leaves)


def abstract_params_and_output(model, input_shape):
  """Parameter count and output shape from one jax.eval_shape trace (no memory)."""
  h, w, c = input_shape
  x = jnp.zeros((1, h, w, c))

  def fn(rng):
    cond = example_condition(model, 1)
    variables = model.init(rng, x, jnp.zeros(1), cond)
    return variables, model.apply(variables, x, jnp.zeros(1), cond)

  variables, out = jax.eval_shape(fn, jax.random.PRNGKey(0))
  return sum(l.size for l in jax.tree.leaves(nn.unbox(variables))), out.shape


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_published_configs_match_parameter_counts(name, scan):
  # A small latent and text length: parameter counts do not depend on them (nor on scanning).
  model = mmdit(name, text_length=8, scan_layers=scan)
  count, shape = abstract_params_and_output(model, (16, 16, 16))
  assert shape == (1, 16, 16, 16)
  published, rel_tol = PUBLISHED_PARAMS[name]
  assert abs(count - published) <= rel_tol * published, count


def test_create_model_by_name_and_kontext_shapes():
  model = create_model({"name": "FLUX.1-Kontext-dev", "text_length": 8,
                        "cond_image_shape": [8, 8, 16]})
  assert model.condition_keys == ("text", "text_mask", "pooled", "guidance", "cond_image")
  assert PRESET_INPUT["FLUX.1-dev"] == (128, 128, 16)
  with pytest.raises(ValueError, match="depth"):
    create_model({"name": "MMDiT", "depth": 3})
  with pytest.raises(ValueError, match="vocab_size"):
    MMDiT().check_config()


@pytest.mark.parametrize("make", [
    lambda: MMDiT(depth_double=2, depth_single=1, **dict(SMALL, hidden_size=128, patch_size=4)),
    lambda: TextDiT(depth=2, text_conditioning="cross_attn",
                    **dict(SMALL, hidden_size=128, patch_size=4)),
])
def test_analytic_flops_match_xla_cost_analysis(make):
  from dit_jax.studies.reports import flops_row
  row = flops_row(make(), "m", 32, 32, 3, with_xla=True)
  # XLA also counts elementwise work (norms, softmax, RoPE): a few percent at this width.
  assert 1.0 <= row["xla_gflops"] / row["gflops"] < 1.1, row


def test_kontext_conditioning_image_tokens_steer_the_output():
  model = MMDiT(depth_double=1, depth_single=1, image_conditioning=True,
                cond_image_shape=(16, 16, 3), **SMALL)
  x, cond = shapes_batch(2)
  cond = dict(cond, cond_image=jnp.zeros((2, 16, 16, 3)))
  variables = perturbed(nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), x, jnp.zeros(2),
                                                     cond)))
  assert set(variables["params"]) >= {"x_embedder"} and "x_embedder_1" not in variables["params"]
  apply = jax.jit(lambda c: model.apply(variables, x, jnp.full((2,), 0.5), c))
  out = apply(cond)
  assert out.shape == x.shape
  other = apply(dict(cond, cond_image=jnp.ones((2, 16, 16, 3))))
  assert np.abs(np.asarray(other) - np.asarray(out)).max() > 1e-4
