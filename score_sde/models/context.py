"""Context encoders for cross-attention conditioning (Rombach et al. 2022, Sec. 3.3): what a
latent U-Net (models/unet_ldm.py) attends to, a sequence (B, L, width).

  ClassContext:  class labels (B,) -> one learned token per class (B, 1, width); label
                 num_classes is the null label of the unconditional prediction.
  TextContext:   word ids (B, L) of captions (captions.WordTokenizer; 0 pads) -> (B, L, width),
                 a small bidirectional transformer trained with the score model, as LDM's
                 text-to-image models trained theirs. The empty caption (all padding) is the
                 null context.

Training replaces a batch's conditions by the null ones at a given rate (losses.drop_labels), so
that one model learns the conditional and the unconditional score (classifier-free guidance, Ho &
Salimans 2022).
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from score_sde.models import attention


class ClassContext(nn.Module):
  """labels int (B,) in [0, num_classes] -> (B, 1, width) from a table (num_classes + 1, width)."""

  num_classes: int
  width: int

  @nn.compact
  def __call__(self, labels):
    return nn.Embed(self.num_classes + 1, self.width, name='class_tokens')(labels)[:, None, :]


class TextLayer(nn.Module):
  """x + self_attention(LN(x)), then h + MLP(LN(h)) with a GELU MLP of 4 x width (pre-LN)."""

  heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    h = nn.LayerNorm(dtype=self.dtype, name='norm_attention')(x)
    dense = lambda name: nn.Dense(width, dtype=self.dtype, name=name)  # noqa: E731
    h = attention.multi_head_attention(dense('query')(h), dense('key')(h), dense('value')(h),
                                       self.heads)
    x = x + dense('attention_out')(h)
    h = nn.LayerNorm(dtype=self.dtype, name='norm_mlp')(x)
    h = nn.gelu(nn.Dense(4 * width, dtype=self.dtype, name='mlp_in')(h), approximate=False)
    return x + nn.Dense(width, dtype=self.dtype, name='mlp_out')(h)


class TextContext(nn.Module):
  """ids int (B, L) over `vocab_size` words -> (B, L, width): word and position embeddings,
  `layers` TextLayers, a final LayerNorm."""

  vocab_size: int
  max_length: int
  width: int = 64
  layers: int = 2
  heads: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids):
    if ids.shape[1] > self.max_length:
      raise ValueError(f'{ids.shape[1]} word ids exceed max_length = {self.max_length}.')
    x = nn.Embed(self.vocab_size, self.width, dtype=self.dtype, name='words')(ids)
    positions = self.param('positions', nn.initializers.normal(0.02),
                           (self.max_length, self.width))
    x = x + positions[:ids.shape[1]].astype(self.dtype)
    for i in range(self.layers):
      x = TextLayer(self.heads, dtype=self.dtype, name=f'layers_{i}')(x)
    return nn.LayerNorm(dtype=self.dtype, name='final_norm')(x)

