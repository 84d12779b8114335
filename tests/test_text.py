"""Tokenizers (data.tokenizers), the small text encoder (models.text_encoder: padding and
permutation behaviour) and precomputed text embeddings (data.text_embeddings)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.data import text_embeddings, tokenizers
from dit_jax.models import text_encoder


def test_word_tokenizer_ids_bos_padding_and_unknown_words():
  tok = tokenizers.WordTokenizer(["a", "red", "circle"])
  tokens, mask = tok.encode("A red  circle, a blue one", 8)
  np.testing.assert_array_equal(tokens, [tokenizers.BOS, 3, 4, 5, 3, tokenizers.UNK, tokenizers.UNK, tokenizers.PAD])
  np.testing.assert_array_equal(mask, [1, 1, 1, 1, 1, 1, 1, 0])
  with pytest.raises(ValueError, match="text_length"):
    tok.encode("a red circle", 3)


def test_shapes_vocabulary_covers_every_caption_word():
  from dit_jax.data import shapes
  tok = tokenizers.make_tokenizer("words:shapes")
  config = shapes.ShapesConfig(name="t", resolution=24, min_objects=1, max_objects=9)
  captions = [shapes.example(config, "train", i)["caption"] for i in range(50)]
  tokens, mask = tok.encode_batch(captions, 80)
  assert not np.any(tokens == tokenizers.UNK)
  assert mask.sum(1).max() == max(len(c.split()) for c in captions) + 1


def test_byte_tokenizer_is_utf8_plus_three():
  tokens, mask = tokenizers.make_tokenizer("bytes").encode("hé", 6)
  np.testing.assert_array_equal(tokens[:4], [tokenizers.BOS, ord("h") + 3, 0xC3 + 3, 0xA9 + 3])
  assert mask.sum() == 4
  with pytest.raises(ValueError, match="tokenizer"):
    tokenizers.make_tokenizer("sentencepiece")


def test_masked_mean_matches_numpy():
  x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
  mask = np.array([[1, 1, 0], [0, 0, 0]], bool)
  out = np.asarray(text_encoder.masked_mean(jnp.asarray(x), jnp.asarray(mask)))
  np.testing.assert_allclose(out[0], x[0, :2].mean(0))
  np.testing.assert_array_equal(out[1], 0)  # no valid token: zeros, not NaN


@pytest.fixture(scope="module")
def encoder():
  enc = text_encoder.TextEncoder(vocab_size=20, width=16, depth=2, num_heads=2)
  tokens = jnp.asarray(np.random.default_rng(0).integers(3, 20, (2, 7)), jnp.int32)
  mask = jnp.asarray(np.arange(7) < np.array([[4], [7]]))
  variables = nn.unbox(jax.jit(enc.init)(jax.random.PRNGKey(0), tokens, mask))
  return enc, variables, tokens, mask


def test_encoder_ignores_padding(encoder):
  enc, variables, tokens, mask = encoder
  apply = jax.jit(enc.apply)
  out, pooled = apply(variables, tokens, mask)
  garbage = jnp.where(mask, tokens, 17)
  out2, pooled2 = apply(variables, garbage, mask)
  np.testing.assert_allclose(np.asarray(out2)[mask], np.asarray(out)[mask], atol=1e-5)
  np.testing.assert_allclose(pooled2, pooled, atol=1e-5)
  np.testing.assert_allclose(pooled[0], np.asarray(out)[0, :4].mean(0), atol=1e-5)


def test_encoder_is_permutation_equivariant_given_position_ids(encoder):
  enc, variables, tokens, mask = encoder
  ids = text_encoder.text_positions(mask)
  perm = np.random.default_rng(1).permutation(7)
  out, pooled = enc.apply(variables, tokens, mask, ids)
  out_p, pooled_p = enc.apply(variables, tokens[:, perm], mask[:, perm], ids[:, perm])
  np.testing.assert_allclose(out_p, np.asarray(out)[:, perm], atol=1e-5)
  np.testing.assert_allclose(pooled_p, pooled, atol=1e-5)
  # Word order matters without the ids: RoPE sees positions.
  out_no_ids, _ = enc.apply(variables, tokens[:, perm], mask[:, perm])
  assert np.abs(np.asarray(out_no_ids) - np.asarray(out)[:, perm]).max() > 1e-3


def test_load_text_embeddings_round_trip_and_errors(tmp_path):
  path = tmp_path / "emb.npz"
  rng = np.random.default_rng(0)
  np.savez(path, text=rng.normal(size=(3, 5, 8)), text_mask=np.ones((3, 5), bool),
           pooled=rng.normal(size=(3, 4)))
  out = text_embeddings.load_text_embeddings(path, pooled_dim=4)
  assert out["text"].shape == (3, 5, 8) and out["text"].dtype == np.float32
  assert out["text_mask"].dtype == bool
  with pytest.raises(ValueError, match="pooled_dim=6"):
    text_embeddings.load_text_embeddings(path, pooled_dim=6)
  with pytest.raises(FileNotFoundError, match="np.savez"):
    text_embeddings.load_text_embeddings(tmp_path / "missing.npz")


def test_pipeline_preprocess_tokenizes_captions_only_when_configured():
  from dit_jax.data.config import DataConfig
  from dit_jax.data.pipeline import preprocess
  example = {"image": np.zeros((8, 8, 3), np.uint8), "caption": b"a red circle on the left"}
  plain = preprocess(example, image_size=None, keep={})
  assert set(plain) == {"image"}  # unchanged behaviour: captions dropped
  tok = tokenizers.make_tokenizer("words:shapes")
  out = preprocess(example, image_size=None, keep={}, text=(tok, 10))
  want_tokens, want_mask = tok.encode("a red circle on the left", 10)
  np.testing.assert_array_equal(out["text_tokens"], want_tokens)
  np.testing.assert_array_equal(out["text_mask"], want_mask)
  assert out["text_mask"].sum() == 7 and out["text_tokens"].dtype == np.int32
  assert DataConfig(name="shapes/multi_32").text_tokenizer is None
