"""Captions: the words of the bundled captioned digits (image_datasets.captioned_digits,
digit_pairs) and the word-level tokenizer of the small text encoders trained with a latent
model (LDM's text-to-image models trained theirs jointly).
"""
import re
from typing import Sequence

import numpy as np

DIGIT_WORDS = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine')
# Every word of both sets' captions.
DIGIT_VOCABULARY = ('a', 'handwritten', *DIGIT_WORDS, 'left', 'right', 'of')
PAD, UNKNOWN = '<pad>', '<unk>'


def words_of(caption: str) -> list:
  """Lower-cased words of a caption (letters, digits and apostrophes; the rest separates)."""
  return re.findall(r"[a-z0-9']+", caption.lower())


class WordTokenizer:
  """Captions -> int32 ids (B, length) over a fixed vocabulary: id 0 pads, id 1 is an unknown
  word, the vocabulary's words follow in order. Longer captions are refused, not cut."""

  def __init__(self, vocabulary: Sequence[str], length: int):
    words = list(dict.fromkeys(vocabulary))
    if PAD in words or UNKNOWN in words:
      raise ValueError(f'the vocabulary must not hold the reserved {PAD!r} or {UNKNOWN!r}.')
    self.tokens = [PAD, UNKNOWN] + words
    self.ids = {token: i for i, token in enumerate(self.tokens)}
    self.length = length

  @classmethod
  def from_captions(cls, captions: Sequence[str], length: int = None) -> 'WordTokenizer':
    """The vocabulary of the captions' words in order of first appearance; `length` defaults
    to the longest caption's word count."""
    split = [words_of(c) for c in captions]
    vocabulary = [w for words in split for w in words]
    return cls(vocabulary, length if length is not None else max(map(len, split)))

  @property
  def vocab_size(self) -> int:
    return len(self.tokens)

  def __call__(self, captions: Sequence[str]) -> np.ndarray:
    rows = np.zeros((len(captions), self.length), np.int32)
    for i, caption in enumerate(captions):
      words = words_of(caption)
      if len(words) > self.length:
        raise ValueError(f'caption {caption!r} has {len(words)} words; the tokenizer takes at '
                         f'most {self.length}.')
      rows[i, :len(words)] = [self.ids.get(w, self.ids[UNKNOWN]) for w in words]
    return rows

  def decode(self, ids) -> list:
    """ids (B, length) -> captions, padding dropped."""
    return [' '.join(self.tokens[i] for i in row if i != 0) for row in np.asarray(ids)]
