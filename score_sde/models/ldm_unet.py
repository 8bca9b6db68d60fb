"""The latent-diffusion U-Net (models/unet_ldm.py) as a model of the zoo, conditioned through
cross-attention (Rombach et al. 2022, Sec. 3.3) on what config.model.conditioning names:

  None      no condition: the transformers attend to one learned token
  'class'   class labels int (B,) in 0 .. num_classes (num_classes: the null label), one learned
            token each (context.ClassContext)
  'text'    word ids int (B, context_length) of captions (captions.WordTokenizer over
            model.vocabulary; 0 pads, all-padding is the null caption), encoded by a small
            transformer trained with the model (context.TextContext)
  'clip'    text features float (B, context_length, context_dim) of a frozen text encoder (the
            CLIP of a Stable Diffusion checkpoint, computed outside the model: conditions.py)

The condition arrives as `class_labels` (the zoo's name for a model's condition); None is the
null condition. The noise label (999 t for VP, sigma for VE) goes through the U-Net's sinusoidal
timestep features; with model.scale_by_sigma (continuous VE) the output is divided by it.

Config fields (config.model): nf, ch_mult (block channels nf x ch_mult), num_res_blocks,
attn_resolutions (resolutions whose blocks carry spatial transformers), head_dim, context_dim,
conditioning, num_classes ('class'), vocabulary and context_length ('text'), text_layers,
text_heads ('text'), context_length ('clip'), scale_by_sigma.
"""
import math

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from score_sde import config_checks
from score_sde.models import conditioning, context, register_model, unet_ldm

CONDITIONINGS = ('class', 'text', 'clip')
RESERVED_TOKENS = 2  # the word tokenizer's padding and unknown-word ids


def conditioning_kind(config):
  """config.model.conditioning: None or one of CONDITIONINGS (ValueError otherwise)."""
  if config.model.get('conditioning') is None:
    return None
  return config_checks.choice(config, 'model.conditioning', CONDITIONINGS)


def vocab_size(config) -> int:
  """Ids of the word tokenizer of model.vocabulary: its words and the two reserved ones."""
  words = config_checks.get(config, 'model.vocabulary')
  if not isinstance(words, (tuple, list)) or not words or not all(
      isinstance(w, str) for w in words):
    raise ValueError(f"Config field model.vocabulary = {words!r} must be a non-empty list of "
                     "words for model.conditioning = 'text'.")
  return len(dict.fromkeys(words)) + RESERVED_TOKENS


def example_condition(config):
  """A null condition of batch 1, for initialisation; None for an unconditional model."""
  kind = conditioning_kind(config)
  if kind == 'class':
    return jnp.full((1,), conditioning.num_classes(config), jnp.int32)
  length = config_checks.positive_int(config, 'model.context_length') if kind else None
  if kind == 'text':
    return jnp.zeros((1, length), jnp.int32)
  if kind == 'clip':
    width = config_checks.positive_int(config, 'model.context_dim')
    return jnp.zeros((1, length, width), jnp.float32)
  return None


def unet_config(config, image_size: int, channels: int) -> unet_ldm.UNetConfig:
  """The UNetConfig of config.model for images (or latents) of image_size pixels."""
  nf = config_checks.positive_int(config, 'model.nf')
  ch_mult = config_checks.positive_ints(config, 'model.ch_mult')
  attention = tuple(config_checks.get(config, 'model.attn_resolutions'))
  block_channels = tuple(nf * m for m in ch_mult)
  head_dim = config_checks.positive_int(config, 'model.head_dim')
  try:
    return unet_ldm.UNetConfig(
        in_channels=channels, out_channels=channels, block_channels=block_channels,
        layers_per_block=config_checks.positive_int(config, 'model.num_res_blocks'),
        cross_attention=tuple(image_size // 2**i in attention for i in range(len(ch_mult))),
        num_heads=None, head_dim=(head_dim,) * len(ch_mult),
        transformer_depth=(1,) * len(ch_mult),
        context_dim=config_checks.positive_int(config, 'model.context_dim'),
        norm_groups=math.gcd(32, *block_channels), linear_projection=True)
  except ValueError as error:
    raise ValueError(f'Config section model (ldm_unet): {error}') from None


@register_model(name='ldm_unet')
class LatentUNet(nn.Module):
  """x (B, H, W, C), noise labels (B,), condition -> output (B, H, W, C); see the module
  docstring."""

  config: ml_collections.ConfigDict
  takes_class_labels = True
  example_condition = staticmethod(example_condition)

  @staticmethod
  def class_conditional(config) -> bool:
    return conditioning_kind(config) == 'class'

  def _context(self, class_labels, batch: int):
    config, kind = self.config, conditioning_kind(self.config)
    width = config_checks.positive_int(config, 'model.context_dim')
    if kind is None:
      if class_labels is not None:
        raise ValueError('class_labels were given to an unconditional ldm_unet; set '
                         'model.conditioning.')
      token = self.param('null_token', nn.initializers.normal(1.0), (1, 1, width))
      return jnp.broadcast_to(token, (batch, 1, width))
    if class_labels is None:
      class_labels = jnp.broadcast_to(example_condition(config)[0],
                                      (batch, *example_condition(config).shape[1:]))
    if kind == 'class':
      return context.ClassContext(conditioning.num_classes(config), width,
                                  name='class_context')(class_labels)
    if kind == 'text':
      return context.TextContext(
          vocab_size(config), config_checks.positive_int(config, 'model.context_length'), width,
          layers=config_checks.positive_int(config, 'model.text_layers'),
          heads=config_checks.positive_int(config, 'model.text_heads'),
          name='text_context')(class_labels)
    return jnp.asarray(class_labels, jnp.float32)

  @nn.compact
  def __call__(self, x, labels, train: bool = False, class_labels=None):
    del train  # no dropout
    c = unet_config(self.config, x.shape[1], x.shape[-1])
    output = unet_ldm.UNet(c, name='unet')(x, labels, self._context(class_labels, x.shape[0]))
    if config_checks.boolean(self.config, 'model.scale_by_sigma'):
      output = output / labels.reshape(-1, *([1] * (x.ndim - 1)))
    return output
