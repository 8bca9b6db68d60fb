"""Captioned images built from scikit-learn's digits, and the word-level tokenizer of the small
text encoders trained with a latent model (LDM's text-to-image models trained theirs jointly).

Two bundled sets, each split like the digits (every tenth image is a test image; a set's
images are drawn from its own split only):

  single digits:  the 8x8 digit with the caption 'a handwritten seven';
  digit pairs:    two digits side by side (8 x 16), captioned by their order, as 'three left of
                  eight' or, for the same image, 'eight right of three' (each with probability
                  1/2): a model follows it only by attending to which word names which side.

Images are uint8 (N, H, W, 1); captions are lists of str; labels int32 (N,) or (N, 2) (left,
right).
"""
import re
from typing import Sequence

import numpy as np

from score_sde import image_datasets

DIGIT_WORDS = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine')
# Every word of both sets' captions.
DIGIT_VOCABULARY = ('a', 'handwritten', *DIGIT_WORDS, 'left', 'right', 'of')
PAD, UNKNOWN = '<pad>', '<unk>'


def single_digits(split: str) -> tuple:
  """(images uint8 (N, 8, 8, 1), captions, labels int32 (N,)) of a digits split."""
  images, labels = image_datasets.digits_split(split)
  return images, [f'a handwritten {DIGIT_WORDS[d]}' for d in labels], labels


def digit_pairs(split: str, count: int, seed: int = 0) -> tuple:
  """(images uint8 (count, 8, 16, 1), captions, labels int32 (count, 2) = (left, right)):
  random ordered pairs of the split's digits, the same for the same (split, count, seed)."""
  if count < 1:
    raise ValueError(f'count = {count} must be a positive number of pairs.')
  images, labels = image_datasets.digits_split(split)
  rng = np.random.default_rng([seed, int(split == 'test')])
  left, right = rng.integers(0, len(images), (2, count))
  flip = rng.random(count) < 0.5
  pairs = np.concatenate([images[left], images[right]], axis=2)
  words = [(DIGIT_WORDS[labels[a]], DIGIT_WORDS[labels[b]]) for a, b in zip(left, right)]
  captions = [f'{b} right of {a}' if f else f'{a} left of {b}' for (a, b), f in zip(words, flip)]
  return pairs, captions, np.stack([labels[left], labels[right]], axis=1)


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
