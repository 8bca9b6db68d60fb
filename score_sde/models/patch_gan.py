"""The PatchGAN discriminator of pix2pix (Isola et al. 2017, App. 6.1.2), as VQGAN and latent
diffusion train their autoencoders with (taming-transformers' NLayerDiscriminator), NHWC:

  images (B, H, W, C) -> logits (B, H', W', 1), one real-vs-fake logit per overlapping patch.

A 4 x 4 stride-2 conv to `channels` and LeakyReLU(0.2); `layers - 1` more 4 x 4 stride-2 convs,
each doubling the channels up to 8 x `channels`, with batch normalisation and LeakyReLU; one
4 x 4 stride-1 conv with normalisation and LeakyReLU; a 4 x 4 stride-1 conv to one logit. All
convs pad by 1. With 3 layers each logit sees a 70 x 70 patch.

The normalisation is batch normalisation in training mode: it standardises each channel over
the batch and positions of the call it is in, with a learned scale and bias. The discriminator
only ever judges training batches, so it keeps no running statistics and its parameters stay
one plain pytree.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

LEAK = 0.2
_BATCH_NORM_EPS = 1e-5


def batch_moments(x):
  """Mean and (biased) variance per channel of x (B, H, W, C) over (B, H, W): two (C,)."""
  mean = jnp.mean(x, axis=(0, 1, 2))
  return mean, jnp.mean((x - mean) ** 2, axis=(0, 1, 2))


class BatchStandardise(nn.Module):
  """x (B, H, W, C) -> (x - mean) / sqrt(var + 1e-5) * scale + bias, per channel over (B, H, W)."""

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (channels,))
    bias = self.param('bias', nn.initializers.zeros, (channels,))
    mean, var = batch_moments(x)
    return (x - mean) * (scale / jnp.sqrt(var + _BATCH_NORM_EPS)) + bias


class PatchDiscriminator(nn.Module):
  """images (B, H, W, C) in the autoencoder's range -> patch logits (B, H', W', 1); see the
  module docstring. H, W >= 2^(layers + 2) - 2 keep at least one logit."""

  channels: int = 64
  layers: int = 3
  dtype: Any = jnp.float32

  def _conv(self, features: int, stride: int, bias: bool, name: str) -> nn.Conv:
    return nn.Conv(features, (4, 4), strides=(stride, stride), padding=((1, 1), (1, 1)),
                   use_bias=bias, dtype=self.dtype, name=name,
                   kernel_init=nn.initializers.normal(0.02))

  @nn.compact
  def __call__(self, images):
    x = self._conv(self.channels, 2, True, 'conv_0')(images.astype(self.dtype))
    x = nn.leaky_relu(x, LEAK)
    for i in range(1, self.layers + 1):
      stride = 2 if i < self.layers else 1
      x = self._conv(self.channels * min(2**i, 8), stride, False, f'conv_{i}')(x)
      x = nn.leaky_relu(BatchStandardise(name=f'norm_{i}')(x), LEAK)
    return self._conv(1, 1, True, 'logits')(x)
