"""CLIP's byte-level BPE tokenizer (Radford et al. 2021) as Stable Diffusion pipelines use it,
built on the `tokenizers` package from a checkpoint's vocabulary files.

Text is NFC-normalised, runs of whitespace become one space, and it is lower-cased; it is split
into the special tokens, contractions ('s 't 're 've 'm 'll 'd), runs of letters, single digits
and runs of other non-space characters; each piece is mapped to byte-level characters and merged
by the BPE ranks, its last symbol carrying the end-of-word mark '</w>'. A prompt becomes
[start] + its first max_length - 2 tokens + [end], padded to max_length with the pad token.
As in transformers' CLIPTokenizer, the special tokens (start, end and pad) are matched in the
text before anything else: with SD 2.x's pad token '!', every '!' of a prompt is a token of its
own.
"""
import gzip
import json
import os
from typing import Optional, Sequence

import numpy as np
import tokenizers
from tokenizers import models, normalizers, pre_tokenizers

START, END = '<|startoftext|>', '<|endoftext|>'
# The pieces CLIP's tokenizer splits text into, before byte-level BPE.
_SPLIT_PATTERN = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|"""
                  r"""[\p{N}]|[^\s\p{L}\p{N}]+""")
# OpenAI's merges file holds this many merges that CLIP uses (its vocabulary: 49,408 tokens).
_OPENAI_NUM_MERGES = 49152 - 256 - 2


def byte_characters() -> list:
  """The 256 printable characters standing for the bytes 0..255 (GPT-2's byte-to-unicode map),
  in the order of CLIP's vocabulary."""
  printable = (list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1)) +
               list(range(ord('®'), ord('ÿ') + 1)))
  codes, extra = list(printable), 0
  for b in range(256):
    if b not in printable:
      printable.append(b)
      codes.append(256 + extra)
      extra += 1
  return [chr(c) for c in codes]


def _read_openai_merges(path: str) -> tuple:
  """(vocab, merges) from OpenAI's bpe_simple_vocab_16e6.txt.gz: vocab = the byte characters,
  the same with '</w>', the merged pairs in order, then the start and end tokens."""
  with gzip.open(path, 'rt', encoding='utf-8') as f:
    lines = [line for line in f.read().split('\n')[1:] if line][:_OPENAI_NUM_MERGES]
  merges = [tuple(line.split()) for line in lines]
  symbols = byte_characters()
  tokens = symbols + [s + '</w>' for s in symbols] + [a + b for a, b in merges] + [START, END]
  return {token: i for i, token in enumerate(tokens)}, merges


def _read_vocab_files(folder: str) -> tuple:
  """(vocab, merges) from a tokenizer folder's vocab.json and merges.txt."""
  with open(os.path.join(folder, 'vocab.json'), encoding='utf-8') as f:
    vocab = json.load(f)
  with open(os.path.join(folder, 'merges.txt'), encoding='utf-8') as f:
    lines = [line for line in f.read().split('\n') if line and not line.startswith('#version')]
  return vocab, [tuple(line.split()) for line in lines]


def _token_setting(folder: str, name: str) -> Optional[str]:
  """A special token (e.g. 'pad_token') named in the folder's special_tokens_map.json or
  tokenizer_config.json (a string, or a dict with 'content'); None if neither names it."""
  for file_name in ('special_tokens_map.json', 'tokenizer_config.json'):
    path = os.path.join(folder, file_name)
    if os.path.exists(path):
      with open(path, encoding='utf-8') as f:
        value = json.load(f).get(name)
      if isinstance(value, dict):
        value = value.get('content')
      if value is not None:
        return value
  return None


class CLIPTokenizer:
  """tokenize(prompts) -> int32 (B, max_length) token ids; see the module docstring.

  vocab: {token: id}; merges: BPE merges (a, b) in rank order; pad_token: the padding token
  (SD 1.x pads with the end token, SD 2.x with '!').
  """

  def __init__(self, vocab: dict, merges: Sequence[tuple], pad_token: str = END,
               max_length: int = 77):
    for token in (START, END, pad_token):
      if token not in vocab:
        raise ValueError(f'The vocabulary has no token {token!r}.')
    self.vocab, self.max_length = vocab, max_length
    self.start_id, self.end_id, self.pad_id = vocab[START], vocab[END], vocab[pad_token]
    bpe = models.BPE(vocab=vocab, merges=list(merges), end_of_word_suffix='</w>',
                     continuing_subword_prefix='', unk_token=END, fuse_unk=False)
    tokenizer = tokenizers.Tokenizer(bpe)
    tokenizer.normalizer = normalizers.Sequence([
        normalizers.NFC(), normalizers.Replace(tokenizers.Regex(r'\s+'), ' '),
        normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(_SPLIT_PATTERN), behavior='removed', invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tokenizer.add_special_tokens(sorted({START, END, pad_token}))
    self._tokenizer = tokenizer

  @classmethod
  def from_files(cls, path: str, pad_token: Optional[str] = None) -> 'CLIPTokenizer':
    """From a tokenizer folder (vocab.json and merges.txt, with its special tokens and
    model_max_length read from special_tokens_map.json / tokenizer_config.json when present)
    or from OpenAI's bpe_simple_vocab_16e6.txt.gz. `pad_token` overrides the folder's."""
    if os.path.isfile(path) and path.endswith('.gz'):
      vocab, merges = _read_openai_merges(path)
      return cls(vocab, merges, pad_token or END)
    missing = [n for n in ('vocab.json', 'merges.txt') if not os.path.isfile(os.path.join(path, n))]
    if missing:
      raise FileNotFoundError(
          f'{path} is not a CLIP tokenizer: it lacks {missing}. Expected a folder with vocab.json '
          'and merges.txt (the tokenizer/ folder of a diffusers Stable Diffusion checkpoint, or '
          "of openai/clip-vit-large-patch14), or OpenAI's bpe_simple_vocab_16e6.txt.gz.")
    vocab, merges = _read_vocab_files(path)
    max_length = 77
    config_path = os.path.join(path, 'tokenizer_config.json')
    if os.path.exists(config_path):
      with open(config_path, encoding='utf-8') as f:
        max_length = int(json.load(f).get('model_max_length', 77))
    return cls(vocab, merges, pad_token or _token_setting(path, 'pad_token') or END,
               max_length=min(max_length, 77))

  def tokenize(self, prompts: Sequence[str]) -> np.ndarray:
    """Token ids (len(prompts), max_length) int32: start, the prompt's tokens (truncated to
    max_length - 2), end, then padding."""
    if isinstance(prompts, str):
      raise TypeError('tokenize takes a list of prompts, not one string.')
    ids = np.full((len(prompts), self.max_length), self.pad_id, np.int32)
    for row, encoding in enumerate(self._tokenizer.encode_batch(list(prompts),
                                                                add_special_tokens=False)):
      tokens = [self.start_id, *encoding.ids[:self.max_length - 2], self.end_id]
      ids[row, :len(tokens)] = tokens
    return ids
