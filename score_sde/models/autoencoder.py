"""The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, App. G; the VAE of
Stable Diffusion), NHWC, with diffusers' parameter names (AutoencoderKL).

  encode: images (B, H, W, in_channels) in [-1, 1] -> mean, std (B, H/f, W/f, latent_channels)
          of the diagonal Gaussian posterior q(z | x) over the raw (unscaled) latent;
  decode: raw latents (B, h, w, latent_channels) -> decoder output (B, f h, f w, out_channels),
          unclamped (images are its values clipped to [-1, 1]);

with f = 2^(len(block_channels) - 1). Diffusion runs on z * scaling_factor (`scale_latents`).

Encoder: a 3x3 conv, one down block per entry of block_channels (layers_per_block ResNet blocks,
then a stride-2 conv padded at the bottom and right but in the last block), the mid block
(ResNet, single-head self-attention over all positions, ResNet), GroupNorm, SiLU, and a 3x3 conv
to 2 x latent_channels: the posterior's mean and log-variance after the 1x1 `quant_conv`.
Decoder: the 1x1 `post_quant_conv`, a 3x3 conv, the mid block, the up blocks in reverse order of
channels (layers_per_block + 1 ResNet blocks, then 2x upsampling but in the last block),
GroupNorm, SiLU, a 3x3 conv. All its GroupNorms use eps 1e-6.
"""
import dataclasses
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from score_sde.models import ldm_blocks

_EPS = 1e-6
# The log-variance is clipped to this range before the standard deviation is taken.
LOGVAR_RANGE = (-30.0, 20.0)


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
  """Every size of the autoencoder. Defaults: the VAE of Stable Diffusion 1.x / 2.x.

  block_channels: channels of each encoder down block (the decoder mirrors them);
  layers_per_block: ResNet blocks per encoder block (the decoder has one more); norm_groups: the
  GroupNorms' groups; scaling_factor: the factor latents are multiplied by for diffusion.
  """

  in_channels: int = 3
  out_channels: int = 3
  block_channels: Tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  latent_channels: int = 4
  norm_groups: int = 32
  scaling_factor: float = 0.18215

  def __post_init__(self):
    if not self.block_channels or any(c % self.norm_groups for c in self.block_channels):
      raise ValueError(f'block_channels = {self.block_channels} must be non-empty and divisible '
                       f'by norm_groups = {self.norm_groups}.')

  @property
  def downsampling(self) -> int:
    """The factor f by which the latents are smaller than the images in H and W."""
    return 2**(len(self.block_channels) - 1)


class MidBlock(nn.Module):
  """ResNet block, single-head self-attention with a residual (`attentions_0`), ResNet block."""

  groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    x = ldm_blocks.ResnetBlock(channels, self.groups, _EPS, dtype=self.dtype, name='resnets_0')(x)
    x = SelfAttention(self.groups, dtype=self.dtype, name='attentions_0')(x)
    return ldm_blocks.ResnetBlock(channels, self.groups, _EPS, dtype=self.dtype,
                                  name='resnets_1')(x)


class SelfAttention(nn.Module):
  """x (B, H, W, C) -> x + to_out_0(attention(group_norm(x))) with one head of C channels over the
  H W positions (q, k, v with biases)."""

  groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    batch, height, width, channels = x.shape
    h = ldm_blocks.group_norm(self.groups, _EPS, self.dtype, 'group_norm')(x)
    h = h.reshape(batch, height * width, channels)
    h = ldm_blocks.attend(h, None, 1, qkv_bias=True, dtype=self.dtype)
    return x + h.reshape(x.shape)


class Encoder(nn.Module):
  """images (B, H, W, in_channels) -> (B, H/f, W/f, 2 latent_channels), before `quant_conv`."""

  config: AutoencoderConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = self.config
    x = ldm_blocks.conv(c.block_channels[0], 3, self.dtype, 'conv_in')(x.astype(self.dtype))
    for i, channels in enumerate(c.block_channels):
      last = i == len(c.block_channels) - 1
      x = ResnetStack(channels, c.layers_per_block, c.norm_groups, None if last else 'down',
                      dtype=self.dtype, name=f'down_blocks_{i}')(x)
    x = MidBlock(c.norm_groups, dtype=self.dtype, name='mid_block')(x)
    x = nn.silu(ldm_blocks.group_norm(c.norm_groups, _EPS, self.dtype, 'conv_norm_out')(x))
    return ldm_blocks.conv(2 * c.latent_channels, 3, self.dtype, 'conv_out')(x)


class ResnetStack(nn.Module):
  """`layers` ResNet blocks to `channels`, then `resample`: 'down' (the encoder's stride-2 conv),
  'up' (the decoder's 2x upsampling) or None. diffusers' DownEncoderBlock2D / UpDecoderBlock2D."""

  channels: int
  layers: int
  groups: int
  resample: Optional[str]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for j in range(self.layers):
      x = ldm_blocks.ResnetBlock(self.channels, self.groups, _EPS, dtype=self.dtype,
                                 name=f'resnets_{j}')(x)
    if self.resample == 'down':
      x = ldm_blocks.Downsample(self.channels, asymmetric=True, dtype=self.dtype,
                                name='downsamplers_0')(x)
    elif self.resample == 'up':
      x = ldm_blocks.Upsample(self.channels, dtype=self.dtype, name='upsamplers_0')(x)
    return x


class Decoder(nn.Module):
  """latents (B, h, w, latent_channels), after `post_quant_conv` -> (B, f h, f w, out_channels)."""

  config: AutoencoderConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z):
    c = self.config
    channels = tuple(reversed(c.block_channels))
    x = ldm_blocks.conv(channels[0], 3, self.dtype, 'conv_in')(z)
    x = MidBlock(c.norm_groups, dtype=self.dtype, name='mid_block')(x)
    for i, block_channels in enumerate(channels):
      last = i == len(channels) - 1
      x = ResnetStack(block_channels, c.layers_per_block + 1, c.norm_groups,
                      None if last else 'up', dtype=self.dtype, name=f'up_blocks_{i}')(x)
    x = nn.silu(ldm_blocks.group_norm(c.norm_groups, _EPS, self.dtype, 'conv_norm_out')(x))
    return ldm_blocks.conv(c.out_channels, 3, self.dtype, 'conv_out')(x)


class AutoencoderKL(nn.Module):
  """The autoencoder; `encode` and `decode` are its two halves (the module docstring). Calling
  it encodes and decodes the posterior mean (used to create the parameters)."""

  config: AutoencoderConfig = AutoencoderConfig()
  dtype: Any = jnp.float32

  def setup(self):
    c = self.config
    self.encoder = Encoder(c, dtype=self.dtype)
    self.quant_conv = ldm_blocks.conv(2 * c.latent_channels, 1, self.dtype, 'quant_conv')
    self.post_quant_conv = ldm_blocks.conv(c.latent_channels, 1, self.dtype, 'post_quant_conv')
    self.decoder = Decoder(c, dtype=self.dtype)

  def encode(self, images):
    """Posterior mean and std (B, H/f, W/f, latent_channels) of images (B, H, W, C) in [-1, 1]."""
    f = self.config.downsampling
    if images.shape[1] % f or images.shape[2] % f:
      raise ValueError(f'The autoencoder downsamples by {f}: image height and width must be '
                       f'divisible by {f}; got {images.shape[1:3]}.')
    moments = self.quant_conv(self.encoder(images))
    mean, logvar = jnp.split(moments, 2, axis=-1)
    logvar = jnp.clip(logvar, *LOGVAR_RANGE)
    return mean, jnp.exp(0.5 * logvar)

  def decode(self, latents):
    """Decoder output (B, f h, f w, out_channels), unclamped, of raw latents (B, h, w, c)."""
    return self.decoder(self.post_quant_conv(latents.astype(self.dtype)))

  def __call__(self, images):
    return self.decode(self.encode(images)[0])


def scale_latents(latents, config: AutoencoderConfig):
  """Raw latents -> the diffusion model's space: z * scaling_factor."""
  return latents * config.scaling_factor


def unscale_latents(latents, config: AutoencoderConfig):
  """The diffusion model's latents -> raw latents for `decode`: z / scaling_factor."""
  return latents / config.scaling_factor
