"""The latent-diffusion U-Net with spatial transformers (Rombach et al. 2022), the network of
Stable Diffusion 1.x / 2.x; NHWC, with diffusers' parameter names (UNet2DConditionModel).

  sample (B, H, W, in_channels), timesteps (B,), context (B, S, context_dim)
      -> output (B, H, W, out_channels): epsilon or v, as the network was trained.

Time: sinusoidal features of the timestep (`timestep_features`), then two dense layers with a
SiLU between (`time_embedding`, 4 x block_channels[0] units) fed to every ResNet block. Then a 3x3
conv, one down block per entry of `block_channels` (layers_per_block ResNet blocks, each followed
by a spatial transformer in the blocks that attend, and a stride-2 conv but in the last block),
the mid block (ResNet, transformer, ResNet), the mirrored up blocks (layers_per_block + 1 ResNet
blocks, each on the concatenation with the matching down-path activation, then a transformer
where the mirrored down block attends, and 2x upsampling but in the last block), GroupNorm,
SiLU and a 3x3 conv. H and W must be divisible by 2^(len(block_channels) - 1).

A spatial transformer (`SpatialTransformer`): GroupNorm (eps 1e-6), `proj_in` (1x1 conv for SD
1.x, linear for SD 2.x), `transformer_depth` blocks of [LayerNorm, self-attention, LayerNorm,
cross-attention over the context, LayerNorm, GEGLU feed-forward of 4x width], each with a
residual, `proj_out`, and the residual of the whole.
"""
import dataclasses
import math
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from score_sde.models import ldm_blocks


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """Every size of the U-Net. Per-block tuples have one entry per down block (the up blocks
  mirror them). Heads: give `num_heads` (heads per block) or `head_dim` (channels per head per
  block), not both. Defaults: Stable Diffusion 1.5.

  block_channels: channels of each down block's output; layers_per_block: ResNet blocks per down
  block; cross_attention: which down blocks (and mirrored up blocks) carry spatial transformers;
  transformer_depth: transformer blocks per spatial transformer, per block (the mid block takes
  the last); context_dim: width of the context sequence; norm_groups, norm_eps: the GroupNorms of
  the ResNet blocks and the output; linear_projection: proj_in / proj_out are dense layers (SD
  2.x) rather than 1x1 convs (SD 1.x); flip_sin_to_cos, freq_shift: the timestep features (see
  `timestep_features`); mid_attention: the mid block's transformer.
  """

  in_channels: int = 4
  out_channels: int = 4
  block_channels: Tuple[int, ...] = (320, 640, 1280, 1280)
  layers_per_block: int = 2
  cross_attention: Tuple[bool, ...] = (True, True, True, False)
  num_heads: Optional[Tuple[int, ...]] = (8, 8, 8, 8)
  head_dim: Optional[Tuple[int, ...]] = None
  transformer_depth: Tuple[int, ...] = (1, 1, 1, 1)
  context_dim: int = 768
  norm_groups: int = 32
  norm_eps: float = 1e-5
  linear_projection: bool = False
  flip_sin_to_cos: bool = True
  freq_shift: float = 0.0
  mid_attention: bool = True

  def __post_init__(self):
    blocks = len(self.block_channels)
    if blocks < 1 or any(not isinstance(c, int) or c < 1 for c in self.block_channels):
      raise ValueError(f'block_channels = {self.block_channels} must be positive integers.')
    for name in ('cross_attention', 'transformer_depth') + (
        ('num_heads',) if self.num_heads is not None else ('head_dim',)):
      if len(getattr(self, name)) != blocks:
        raise ValueError(f'{name} = {getattr(self, name)} needs one entry per block '
                         f'({blocks}, as block_channels = {self.block_channels}).')
    if (self.num_heads is None) == (self.head_dim is None):
      raise ValueError(f'Give exactly one of num_heads ({self.num_heads}) and head_dim '
                       f'({self.head_dim}).')
    for i, channels in enumerate(self.block_channels):
      if channels % self.norm_groups:
        raise ValueError(f'block_channels[{i}] = {channels} is not divisible by norm_groups = '
                         f'{self.norm_groups}.')
      if channels % self.heads(i):
        raise ValueError(f'block_channels[{i}] = {channels} does not split into '
                         f'{self.heads(i)} attention heads.')

  def heads(self, block: int) -> int:
    """Attention heads of the transformers of down block `block` (-1: the last, and the mid)."""
    if self.num_heads is not None:
      return self.num_heads[block]
    return self.block_channels[block] // self.head_dim[block]

  @property
  def time_embed_dim(self) -> int:
    return 4 * self.block_channels[0]

  @property
  def downsampling(self) -> int:
    """The factor by which H and W shrink at the bottom of the U-Net."""
    return 2**(len(self.block_channels) - 1)


def timestep_features(timesteps, dim: int, flip_sin_to_cos: bool, freq_shift: float,
                      max_period: float = 10_000.0):
  """Sinusoidal features (B, dim) of timesteps (B,) (integers or fractional, float32): frequencies
  w_j = max_period^(-j / (dim/2 - freq_shift)), j < dim/2, features [sin(t w), cos(t w)], or
  [cos, sin] with `flip_sin_to_cos` (Stable Diffusion: flipped, shift 0; DDPM: shift 1)."""
  half = dim // 2
  frequencies = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) /
                        (half - freq_shift))
  angles = jnp.asarray(timesteps, jnp.float32)[:, None] * frequencies[None, :]
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  features = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
  if dim % 2:
    features = jnp.pad(features, ((0, 0), (0, 1)))
  return features


class TimestepEmbedding(nn.Module):
  """features (B, F) -> linear_2(silu(linear_1(features))), (B, dim)."""

  dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features):
    h = nn.Dense(self.dim, dtype=self.dtype, name='linear_1')(features)
    return nn.Dense(self.dim, dtype=self.dtype, name='linear_2')(nn.silu(h))


class GEGLU(nn.Module):
  """x (..., C) -> a * gelu(b), [a, b] = proj(x) split in two halves of `dim` (Shazeer 2020)."""

  dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    a, b = jnp.split(nn.Dense(2 * self.dim, dtype=self.dtype, name='proj')(x), 2, axis=-1)
    return a * nn.gelu(b, approximate=False)


class FeedForward(nn.Module):
  """GEGLU to 4 C hidden units (`net_0`), then a dense layer back to C (`net_2`)."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = GEGLU(4 * x.shape[-1], dtype=self.dtype, name='net_0')(x)
    return nn.Dense(x.shape[-1], dtype=self.dtype, name='net_2')(h)


class BasicTransformerBlock(nn.Module):
  """x (B, T, C), context (B, S, D) -> (B, T, C): self-attention, cross-attention over the
  context and the feed-forward, each on a LayerNorm of its input and added back to it."""

  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, context):
    def norm(name):
      return nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, use_fast_variance=False, name=name)

    def attend(name):
      return ldm_blocks.Attention(self.num_heads, dtype=self.dtype, name=name)

    x = x + attend('attn1')(norm('norm1')(x))
    x = x + attend('attn2')(norm('norm2')(x), context)
    return x + FeedForward(dtype=self.dtype, name='ff')(norm('norm3')(x))


class SpatialTransformer(nn.Module):
  """x (B, H, W, C), context (B, S, D) -> (B, H, W, C) (diffusers' Transformer2DModel): the
  H W positions attend to each other and to the context (see the module docstring)."""

  num_heads: int
  depth: int
  linear_projection: bool
  groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, context):
    batch, height, width, channels = x.shape
    h = ldm_blocks.group_norm(self.groups, 1e-6, self.dtype, 'norm')(x)
    if self.linear_projection:
      h = nn.Dense(channels, dtype=self.dtype, name='proj_in')(h.reshape(batch, -1, channels))
    else:
      h = ldm_blocks.conv(channels, 1, self.dtype, 'proj_in')(h).reshape(batch, -1, channels)
    for k in range(self.depth):
      h = BasicTransformerBlock(self.num_heads, dtype=self.dtype,
                                name=f'transformer_blocks_{k}')(h, context)
    if self.linear_projection:
      h = nn.Dense(channels, dtype=self.dtype, name='proj_out')(h)
      h = h.reshape(batch, height, width, channels)
    else:
      h = ldm_blocks.conv(channels, 1, self.dtype, 'proj_out')(
          h.reshape(batch, height, width, channels))
    return h + x


class DownBlock(nn.Module):
  """Block `index` of the down path: x -> (x', the activations kept for the skip connections)."""

  config: UNetConfig
  index: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, temb, context):
    c, i = self.config, self.index
    channels, skips = c.block_channels[i], []
    for j in range(c.layers_per_block):
      x = ldm_blocks.ResnetBlock(channels, c.norm_groups, c.norm_eps, dtype=self.dtype,
                                 name=f'resnets_{j}')(x, temb)
      if c.cross_attention[i]:
        x = SpatialTransformer(c.heads(i), c.transformer_depth[i], c.linear_projection,
                               c.norm_groups, dtype=self.dtype, name=f'attentions_{j}')(x, context)
      skips.append(x)
    if i < len(c.block_channels) - 1:
      x = ldm_blocks.Downsample(channels, dtype=self.dtype, name='downsamplers_0')(x)
      skips.append(x)
    return x, skips


class MidBlock(nn.Module):
  """ResNet block, spatial transformer (if `mid_attention`), ResNet block at the bottom."""

  config: UNetConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, temb, context):
    c = self.config
    channels = c.block_channels[-1]
    x = ldm_blocks.ResnetBlock(channels, c.norm_groups, c.norm_eps, dtype=self.dtype,
                               name='resnets_0')(x, temb)
    if c.mid_attention:
      x = SpatialTransformer(c.heads(-1), c.transformer_depth[-1], c.linear_projection,
                             c.norm_groups, dtype=self.dtype, name='attentions_0')(x, context)
    return ldm_blocks.ResnetBlock(channels, c.norm_groups, c.norm_eps, dtype=self.dtype,
                                  name='resnets_1')(x, temb)


class UpBlock(nn.Module):
  """Up block `index` (0 at the bottom): mirrors down block len(block_channels) - 1 - index and
  consumes layers_per_block + 1 skip activations (popped from the end of `skips`)."""

  config: UNetConfig
  index: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, skips, temb, context):
    c = self.config
    mirror = len(c.block_channels) - 1 - self.index
    channels = c.block_channels[mirror]
    for j in range(c.layers_per_block + 1):
      x = jnp.concatenate([x, skips.pop()], axis=-1)
      x = ldm_blocks.ResnetBlock(channels, c.norm_groups, c.norm_eps, dtype=self.dtype,
                                 name=f'resnets_{j}')(x, temb)
      if c.cross_attention[mirror]:
        x = SpatialTransformer(c.heads(mirror), c.transformer_depth[mirror], c.linear_projection,
                               c.norm_groups, dtype=self.dtype, name=f'attentions_{j}')(x, context)
    if mirror > 0:
      x = ldm_blocks.Upsample(channels, dtype=self.dtype, name='upsamplers_0')(x)
    return x


class UNet(nn.Module):
  """The LDM U-Net: (sample (B, H, W, in_channels), timesteps (B,), context (B, S, context_dim))
  -> (B, H, W, out_channels) in the computation dtype `dtype`."""

  config: UNetConfig = UNetConfig()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, sample, timesteps, context):
    c = self.config
    if sample.shape[1] % c.downsampling or sample.shape[2] % c.downsampling:
      raise ValueError(f'The U-Net halves H and W {len(c.block_channels) - 1} times: they must be '
                       f'divisible by {c.downsampling}; got {sample.shape[1:3]}.')
    if context.shape[-1] != c.context_dim:
      raise ValueError(f'context has width {context.shape[-1]}; the U-Net takes '
                       f'context_dim = {c.context_dim}.')
    timesteps = jnp.broadcast_to(timesteps, (sample.shape[0],))
    features = timestep_features(timesteps, c.block_channels[0], c.flip_sin_to_cos, c.freq_shift)
    temb = TimestepEmbedding(c.time_embed_dim, dtype=self.dtype,
                             name='time_embedding')(features.astype(self.dtype))
    x = ldm_blocks.conv(c.block_channels[0], 3, self.dtype, 'conv_in')(sample.astype(self.dtype))
    context = context.astype(self.dtype)
    skips = [x]
    for i in range(len(c.block_channels)):
      x, block_skips = DownBlock(c, i, dtype=self.dtype, name=f'down_blocks_{i}')(x, temb, context)
      skips.extend(block_skips)
    x = MidBlock(c, dtype=self.dtype, name='mid_block')(x, temb, context)
    for i in range(len(c.block_channels)):
      x = UpBlock(c, i, dtype=self.dtype, name=f'up_blocks_{i}')(x, skips, temb, context)
    x = nn.silu(ldm_blocks.group_norm(c.norm_groups, c.norm_eps, self.dtype, 'conv_norm_out')(x))
    return ldm_blocks.conv(c.out_channels, 3, self.dtype, 'conv_out')(x)
