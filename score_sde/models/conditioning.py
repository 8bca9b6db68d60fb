"""Class conditioning of the score networks (NCSN++, DDPM, MLP), for classifier-free guidance
(Ho & Salimans 2022): a learned embedding of the class label added to the time embedding.

With config.model.num_classes = n the labels 0 .. n - 1 are data classes and label n is the null
label of an unconditional prediction; a model trained with label dropout
(losses.drop_labels) learns both. Without num_classes a model has no class embedding and its
parameter tree is that of the official implementation.
"""
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_sde import config_checks


def num_classes(config) -> Optional[int]:
  """config.model.num_classes read as the number of data classes; None when unset. ValueError
  unless a positive integer (or None)."""
  if config.model.get('num_classes') is None:
    return None
  return config_checks.positive_int(config, 'model.num_classes')


def add_class_embedding(temb: Optional[jax.Array], class_labels: Optional[jax.Array],
                        num_classes: Optional[int]) -> Optional[jax.Array]:
  """temb (B, F) plus the embedding of class_labels int (B,) in a table (num_classes + 1, F)
  named 'class_embedding'; the table is created here, in the calling (compact) module.

  class_labels=None means the null label `num_classes` for every example. Unconditional models
  (num_classes None) get temb back unchanged and refuse class labels. Raises ValueError for a
  class-conditional model without a time embedding (temb None: model.conditional = False).
  """
  if num_classes is None:
    if class_labels is not None:
      raise ValueError('class_labels were given to a model without class conditioning; set '
                       'config field model.num_classes to the number of data classes.')
    return temb
  if temb is None:
    raise ValueError(f'Config field model.num_classes = {num_classes} makes the model '
                     'class-conditional, which adds the class embedding to the time embedding: '
                     'it needs model.conditional = True.')
  batch = temb.shape[0]
  if class_labels is None:
    class_labels = jnp.full((batch,), num_classes, jnp.int32)
  if class_labels.shape != (batch,):
    raise ValueError(f'class_labels have shape {class_labels.shape}; expected ({batch},).')
  table = nn.Embed(num_classes + 1, temb.shape[-1], name='class_embedding')
  return temb + table(class_labels)
