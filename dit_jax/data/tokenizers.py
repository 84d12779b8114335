"""Caption tokenizers: captions -> (S,) int32 `text_tokens` and (S,) bool `text_mask`.

    tok = make_tokenizer("words:shapes")             # or "bytes"
    tokens_BS, mask_BS = tok.encode_batch(captions, length=24)

Ids follow the `text_tokens` convention of the model contract: 0 padding (mask False), 1 the
BOS every encoded caption starts with (so the empty caption is BOS + padding), 2 unknown word.
"""
import re

import numpy as np

from dit_jax.data.shapes import COLOUR_NAMES, POSITIONS, SHAPES
from dit_jax.errors import InputError
from dit_jax.models.contract import BOS, PAD

UNK = 2


class WordTokenizer:
  """Lower-case words (letters/digits runs) from a fixed vocabulary; ids 0 pad, 1 BOS, 2 unk."""

  def __init__(self, words):
    self.words = tuple(dict.fromkeys(words))
    self.ids = {w: i + 3 for i, w in enumerate(self.words)}
    self.vocab_size = len(self.words) + 3

  def split(self, text: str) -> list[int]:
    return [self.ids.get(w, UNK) for w in re.findall(r"[a-z0-9]+", text.lower())]

  def encode(self, text: str, length: int) -> tuple[np.ndarray, np.ndarray]:
    return _pad([BOS, *self.split(text)], length, text)

  def encode_batch(self, texts, length: int) -> tuple[np.ndarray, np.ndarray]:
    pairs = [self.encode(t, length) for t in texts]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


class ByteTokenizer(WordTokenizer):
  """UTF-8 bytes: ids 0 pad, 1 BOS, 2 unused, 3 + byte."""

  def __init__(self):
    self.words = ()
    self.vocab_size = 256 + 3

  def split(self, text: str) -> list[int]:
    return [b + 3 for b in text.encode("utf-8")]


def _pad(ids: list[int], length: int, text: str) -> tuple[np.ndarray, np.ndarray]:
  if len(ids) > length:
    raise InputError(f"caption {text!r} needs {len(ids)} tokens (with BOS) but the text length "
                     f"is {length}: raise data.text_length / model.text_length")
  tokens = np.zeros((length,), np.int32)
  tokens[:len(ids)] = ids
  return tokens, np.arange(length) < len(ids)


def shapes_vocabulary() -> list[str]:
  """Every word a `shapes` caption can use."""
  return ["a", "and", *COLOUR_NAMES, *SHAPES,
          *(word for row in POSITIONS for phrase in row for word in phrase.split())]


TOKENIZERS = ("words:shapes", "bytes")


def caption_condition(data_config, captions) -> dict:
  """The condition of a caption model for `captions`: token ids and mask (text_tokens,
  text_mask) from the run's tokenizer and length (data.text_tokenizer, data.text_length)."""
  tokens, mask = make_tokenizer(data_config.text_tokenizer).encode_batch(
      list(captions), data_config.text_length)
  return {"text_tokens": tokens, "text_mask": mask}


def make_tokenizer(name: str) -> WordTokenizer:
  """'words:shapes' (word-level, the shapes captions' vocabulary) or 'bytes' (UTF-8)."""
  if name == "words:shapes":
    return WordTokenizer(shapes_vocabulary())
  if name == "bytes":
    return ByteTokenizer()
  raise InputError(f"text tokenizer {name!r} is not one of {TOKENIZERS}")
