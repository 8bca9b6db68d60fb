"""The conditions of a conditional score model, made from dataset batches and from prompts.

  class-conditional models (model.num_classes; ldm_unet with conditioning 'class'):
      the batch's 'label' int32 (B,); null: the label num_classes
  ldm_unet, conditioning 'text':
      the batch's 'caption' strings -> word ids int32 (B, context_length) over model.vocabulary
      (captions.WordTokenizer; unset, the training captions' words, `resolve_vocabulary`); null:
      the empty caption (all padding)
  ldm_unet, conditioning 'clip':
      the batch's 'caption' strings -> the frozen CLIP text features float32 (B, 77, D) of the
      Stable Diffusion checkpoint model.text_encoder (its tokenizer, its last hidden state);
      null: the features of the empty caption

Models take the conditions as `class_labels`; losses drop them to `null` at the
training.label_dropout rate, and guidance mixes in the score at `null`.
"""
import dataclasses
from typing import Callable, Optional, Sequence

import jax
import numpy as np

from score_sde import captions, config_checks, image_datasets, workdir
from score_sde import models as models_lib
from score_sde.models import ldm_unet


@dataclasses.dataclass(frozen=True)
class Conditions:
  """kind: 'class' | 'text' | 'clip'; field: the batch entry they are made from ('label' or
  'caption'); null: the null condition of one example; encode(values) -> conditions (B, ...)
  of a sequence of labels or captions (numpy)."""

  kind: str
  field: str
  null: np.ndarray
  encode: Callable

  def of_batch(self, batch: dict) -> np.ndarray:
    """The conditions (B, ...) of a dataset batch; ValueError if it lacks the field."""
    if self.field not in batch:
      raise ValueError(f"The model is conditioned on {self.kind} ('{self.field}' of each "
                       f"example), and the batches have only {sorted(batch)}; use a dataset "
                       f'with {self.field}s.')
    return self.encode(batch[self.field])


def _class_conditions(num_classes: int) -> Conditions:
  return Conditions('class', 'label', np.int32(num_classes),
                    lambda labels: np.asarray(labels, np.int32))


def _text_conditions(config) -> Conditions:
  tokenizer = captions.WordTokenizer(
      config_checks.get(config, 'model.vocabulary'),
      config_checks.positive_int(config, 'model.context_length'))
  ldm_unet.vocab_size(config)  # validates the vocabulary
  return Conditions('text', 'caption', tokenizer([''])[0],
                    lambda texts: tokenizer([str(t) for t in texts]))


def _clip_conditions(config) -> Conditions:
  from score_sde import stable_diffusion  # the SD networks, loaded only when used
  path = config_checks.get(config, 'model.text_encoder')
  if not path:
    raise ValueError("model.conditioning = 'clip' needs model.text_encoder: a Stable Diffusion "
                     'checkpoint (a diffusers folder or a single file) whose CLIP encodes the '
                     'captions.')
  pipeline = stable_diffusion.load_pipeline(path, dtype='float32')
  width, length = pipeline.architecture.text.hidden_size, pipeline.tokenizer.max_length
  for field, wanted in (('model.context_dim', width), ('model.context_length', length)):
    if config_checks.get(config, field) != wanted:
      raise ValueError(f'Config field {field} = {config_checks.get(config, field)} must be '
                       f'{wanted} for the CLIP text encoder of {path}.')
  features = jax.jit(pipeline.encode_text)

  def encode(texts: Sequence[str]) -> np.ndarray:
    return np.asarray(features(pipeline.tokenize([str(t) for t in texts])), np.float32)

  return Conditions('clip', 'caption', encode([''])[0], encode)


def get_conditions(config) -> Optional[Conditions]:
  """The Conditions of the config's model, None for an unconditional model."""
  if models_lib.example_condition(config) is None:
    return None
  kind = (ldm_unet.conditioning_kind(config) if config.model.name == 'ldm_unet' else 'class')
  if kind == 'class':
    return _class_conditions(models_lib.num_data_classes(config))
  return _text_conditions(config) if kind == 'text' else _clip_conditions(config)


def resolve_vocabulary(config, workdir_path: str):
  """`config` with the model.vocabulary of a 'text' model set: the given words, else those
  recorded in workdir/config.json by the run's first start, else the words of every training
  caption in order of first appearance (printed; the caller records them). Other configs are
  returned unchanged."""
  model = config.get('model')
  if (not model or model.get('name') != 'ldm_unet' or
      ldm_unet.conditioning_kind(config) != 'text' or model.get('vocabulary') is not None):
    return config
  resolved = config.copy_and_resolve_references()
  recorded = workdir.recorded_field(workdir_path, 'model.vocabulary')
  if recorded:
    resolved.model.vocabulary = tuple(recorded)
    return resolved
  texts = image_datasets.split_captions(config, 'train')
  if not texts:
    raise ValueError("model.conditioning = 'text' with model.vocabulary = None takes the words "
                     f'of the training captions, and data.dataset = {config.data.dataset!r} has '
                     'none.')
  resolved.model.vocabulary = tuple(captions.WordTokenizer.from_captions(texts).tokens[2:])
  print(f'model.vocabulary: {len(resolved.model.vocabulary)} words of {len(texts)} training '
        'captions')
  return resolved
