"""The captioned digit sets against the digits they are made of (each half of a pair is an image
of its split with the label its caption names, in both phrasings), and the word tokenizer."""
import numpy as np
import pytest

from score_sde import captions, image_datasets


def labels_by_image(split: str) -> dict:
  images, labels = image_datasets.digits_split(split)
  table = {}
  for image, label in zip(images, labels):
    table.setdefault(image.tobytes(), set()).add(int(label))
  return table


def test_single_digits_are_captioned_by_their_label():
  images, texts, labels = image_datasets.captioned_digits('test')
  assert images.shape == (179, 8, 8, 1) and len(texts) == 179
  assert all(t == f'a handwritten {captions.DIGIT_WORDS[d]}' for t, d in zip(texts, labels))


@pytest.mark.parametrize('split', ['train', 'test'])
def test_pairs_are_two_digits_of_the_split_in_the_order_their_caption_names(split):
  images, texts, labels = image_datasets.digit_pairs(split, 1000, seed=3)
  assert images.shape == (1000, 8, 16, 1) and images.dtype == np.uint8
  table = labels_by_image(split)
  for image, (left, right) in zip(images, labels):
    assert left in table[image[:, :8].tobytes()] and right in table[image[:, 8:].tobytes()]
  number = {w: d for d, w in enumerate(captions.DIGIT_WORDS)}
  phrasings = []
  for text, (left, right) in zip(texts, labels):
    first, relation, _, second = text.split()
    phrasings.append(relation)
    named = (number[first], number[second]) if relation == 'left' else (number[second],
                                                                        number[first])
    assert named == (left, right), text
  assert 0.45 < np.mean(np.array(phrasings) == 'left') < 0.55


def test_pairs_are_reproducible_per_seed_and_refuse_no_count():
  a = image_datasets.digit_pairs('train', 20, seed=1)
  b = image_datasets.digit_pairs('train', 20, seed=1)
  c = image_datasets.digit_pairs('train', 20, seed=2)
  np.testing.assert_array_equal(a[0], b[0])
  assert a[1] == b[1] and a[1] != c[1]
  with pytest.raises(ValueError, match='count = 0 must be a positive'):
    image_datasets.digit_pairs('train', 0)


def test_word_tokenizer_pads_marks_unknown_words_and_refuses_long_captions():
  tokenizer = captions.WordTokenizer(captions.DIGIT_VOCABULARY, length=5)
  assert tokenizer.vocab_size == 2 + 15
  ids = tokenizer(['Three left of  EIGHT', 'a handwritten zebra'])
  assert ids.dtype == np.int32 and ids.shape == (2, 5)
  three, left, of, eight = (tokenizer.ids[w] for w in ('three', 'left', 'of', 'eight'))
  np.testing.assert_array_equal(ids[0], [three, left, of, eight, 0])
  assert ids[1, 2] == 1  # unknown
  assert tokenizer.decode(ids) == ['three left of eight', 'a handwritten <unk>']
  with pytest.raises(ValueError, match='has 6 words; the tokenizer takes at most 5'):
    tokenizer(['one two three four five six'])
  with pytest.raises(ValueError, match='reserved'):
    captions.WordTokenizer(['<pad>'], 3)
  from_texts = captions.WordTokenizer.from_captions(['b a', 'a c d'])
  assert from_texts.tokens[2:] == ['b', 'a', 'c', 'd'] and from_texts.length == 3
