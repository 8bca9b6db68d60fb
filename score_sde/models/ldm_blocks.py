"""Building blocks shared by the LDM / Stable Diffusion U-Net and the KL autoencoder (Rombach et
al. 2022), NHWC, named as diffusers names them so that checkpoints map onto them leaf by leaf:
ResNet blocks, 2x down- and up-sampling, and the attention projections.

Every block takes `dtype`, the computation dtype (float32, or bfloat16 on accelerators); the
normalisations compute their statistics in float32 whatever it is.
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_sde.models import attention


def group_norm(groups: int, eps: float, dtype, name: str) -> nn.GroupNorm:
  """GroupNorm over (H, W, C / groups) per group, with learned scale and bias; the variance is
  computed as E[(x - mean)^2] (not E[x^2] - mean^2) for float32 accuracy."""
  return nn.GroupNorm(num_groups=groups, epsilon=eps, dtype=dtype, use_fast_variance=False,
                      name=name)


def _patch_conv(x, kernel, window_strides, padding, *, lhs_dilation, rhs_dilation,
                dimension_numbers, feature_group_count, precision):
  """lax.conv_general_dilated for nn.Conv (x NHWC, kernel HWIO), computed on the CPU as one
  matmul of the image patches (B H W, kh kw C) with the kernel (kh kw C, C_out) where an image
  has fewer than C / 2 positions. There XLA's CPU convolution runs at half the matmul's speed
  (SD's 3x3 convs at 16 x 16 x 1280: 58 ms against 28 ms on 2 cores, 94 against 50 ms at
  16 x 16 x 1920); from 32 x 32 x 640 to 32 x 32 x 1920 the convolution is 15-45% faster."""
  batch, height, width, channels = x.shape
  kh, kw = kernel.shape[:2]
  plain = (window_strides, lhs_dilation, rhs_dilation, feature_group_count) == (
      (1, 1), (1, 1), (1, 1), 1)
  if (jax.default_backend() != 'cpu' or not plain or isinstance(padding, str) or
      kh * kw == 1 or 2 * height * width >= channels):
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision)
  padded = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  out_height, out_width = padded.shape[1] - kh + 1, padded.shape[2] - kw + 1
  patches = jnp.concatenate([padded[:, i:i + out_height, j:j + out_width]
                             for i in range(kh) for j in range(kw)], axis=-1)
  out = jnp.dot(patches.reshape(-1, kh * kw * channels), kernel.reshape(kh * kw * channels, -1),
                precision=precision)
  return out.reshape(batch, out_height, out_width, -1)


def conv(features: int, kernel: int, dtype, name: str, stride: int = 1, padding=None) -> nn.Conv:
  """A kernel x kernel convolution padded by kernel // 2 on every side (PyTorch's padding =
  kernel // 2), unless `padding` ((top, bottom), (left, right)) is given."""
  if padding is None:
    padding = ((kernel // 2, kernel // 2),) * 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding,
                 dtype=dtype, conv_general_dilated=_patch_conv, name=name)


class ResnetBlock(nn.Module):
  """x (B, H, W, C) [, temb (B, E)] -> (B, H, W, out_channels):
  x' + conv2(silu(norm2(conv1(silu(norm1(x))) + time_emb_proj(silu(temb))))), with x' = x or its
  1x1 projection `conv_shortcut` when C != out_channels (diffusers' ResnetBlock2D)."""

  out_channels: int
  groups: int
  eps: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, temb: Optional[jax.Array] = None):
    h = nn.silu(group_norm(self.groups, self.eps, self.dtype, 'norm1')(x))
    h = conv(self.out_channels, 3, self.dtype, 'conv1')(h)
    if temb is not None:
      h = h + nn.Dense(self.out_channels, dtype=self.dtype,
                       name='time_emb_proj')(nn.silu(temb))[:, None, None, :]
    h = nn.silu(group_norm(self.groups, self.eps, self.dtype, 'norm2')(h))
    h = conv(self.out_channels, 3, self.dtype, 'conv2')(h)
    if x.shape[-1] != self.out_channels:
      x = conv(self.out_channels, 1, self.dtype, 'conv_shortcut')(x)
    return x + h


class Downsample(nn.Module):
  """A 3x3 convolution of stride 2, (B, H, W, C) -> (B, H/2, W/2, C), padded by 1 on every side
  (the U-Net), or by 1 on the bottom and right only (`asymmetric`, the autoencoder's encoder)."""

  channels: int
  asymmetric: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    padding = ((0, 1), (0, 1)) if self.asymmetric else ((1, 1), (1, 1))
    return conv(self.channels, 3, self.dtype, 'conv', stride=2, padding=padding)(x)


class Upsample(nn.Module):
  """Nearest-neighbour 2x upsampling then a 3x3 convolution: (B, H, W, C) -> (B, 2H, 2W, C)."""

  channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return conv(self.channels, 3, self.dtype, 'conv')(x)


def attend(x, context, num_heads: int, *, qkv_bias: bool = False, dtype=jnp.float32):
  """Multi-head attention of x (B, T, C) over `context` (B, S, D) (x itself if None), creating
  diffusers' projections in the calling module: to_q, to_k, to_v (biases only with `qkv_bias`),
  C / num_heads channels per head, then to_out_0 back to C channels."""
  channels = x.shape[-1]
  context = x if context is None else context
  dense = lambda name: nn.Dense(channels, use_bias=qkv_bias, dtype=dtype, name=name)  # noqa: E731
  q, k, v = dense('to_q')(x), dense('to_k')(context), dense('to_v')(context)
  out = attention.multi_head_attention(q, k, v, num_heads)
  return nn.Dense(channels, dtype=dtype, name='to_out_0')(out)


class Attention(nn.Module):
  """`attend` as a module: x (B, T, C), context (B, S, D) or None -> (B, T, C)."""

  num_heads: int
  qkv_bias: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, context: Optional[jax.Array] = None):
    return attend(x, context, self.num_heads, qkv_bias=self.qkv_bias, dtype=self.dtype)
