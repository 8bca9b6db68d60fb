"""The blocks of NCSN++ and DDPM++ (Song et al. 2021, "Score-based generative modeling through
stochastic differential equations", App. H): self-attention, FIR up/down-sampling, the combiner
of the progressive input/output pyramids, and the DDPM and BigGAN residual blocks. NHWC tensors.

Module class names, parameter names and creation order are those of the official implementation,
so its parameter trees load unchanged.
"""
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_sde.models import layers
from score_sde.models import up_or_down_sampling as resampling
from score_sde.models.layers import GaussianFourierProjection  # noqa: F401  (re-exported)

COMBINE_METHODS = ('cat', 'sum')


def group_norm(x):
  """GroupNorm over the channels of x (B, H, W, C) with min(C // 4, 32) groups, created in the
  calling module (`GroupNorm_<n>`, params scale and bias of shape (C,))."""
  return nn.GroupNorm(num_groups=min(x.shape[-1] // 4, 32))(x)


def skip_sum(x, h, skip_rescale: bool):
  """x + h, divided by sqrt(2) with `skip_rescale` (keeps the variance of two unit-variance
  branches at 1)."""
  return (x + h) / np.sqrt(2.0) if skip_rescale else x + h


class Combine(nn.Module):
  """Merges a pyramid image x (B, H, W, C_x) into features y (B, H, W, C): a 1x1 convolution of x
  to C channels (`Conv_0`), then concatenated with y ('cat', C -> 2C) or added to it ('sum')."""

  method: str = 'cat'

  @nn.compact
  def __call__(self, x, y):
    if self.method not in COMBINE_METHODS:
      raise ValueError(f'Combine method {self.method!r} is not supported; '
                       f'allowed: {list(COMBINE_METHODS)}.')
    h = layers.ddpm_conv1x1(x, y.shape[-1])
    return jnp.concatenate([h, y], axis=-1) if self.method == 'cat' else h + y


class AttnBlockpp(nn.Module):
  """Self-attention over the H W positions of x (B, H, W, C) (DDPM's block, Ho et al. 2020):
  GroupNorm, query/key/value NINs, softmax(q k^T / sqrt(C)) v, an output NIN initialised at
  `init_scale`, and a residual connection (scaled by 1/sqrt(2) with `skip_rescale`)."""

  skip_rescale: bool = False
  init_scale: float = 0.0

  @nn.compact
  def __call__(self, x):
    b, height, width, c = x.shape
    h = group_norm(x)
    q, k, v = (layers.NIN(c)(h).reshape(b, height * width, c) for _ in range(3))
    weights = jax.nn.softmax(jnp.einsum('bic,bjc->bij', q, k) * c**-0.5, axis=-1)
    h = jnp.einsum('bij,bjc->bic', weights, v).reshape(b, height, width, c)
    h = layers.NIN(c, init_scale=self.init_scale)(h)
    return skip_sum(x, h, self.skip_rescale)


class Upsample(nn.Module):
  """2x up-sampling of x (B, H, W, C) to (B, 2H, 2W, out_ch or C).

  fir=False: nearest neighbour, then a 3x3 convolution (`Conv_0`) if `with_conv`;
  fir=True: the FIR filter `fir_kernel`, fused with a 3x3 convolution (`Conv2d_0`) if `with_conv`.
  """

  out_ch: Optional[int] = None
  with_conv: bool = False
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)

  @nn.compact
  def __call__(self, x):
    out_ch = self.out_ch or x.shape[-1]
    if self.fir and self.with_conv:
      return resampling.Conv2d(out_ch, 3, up=True, resample_kernel=self.fir_kernel)(x)
    if self.fir:
      return resampling.upsample_2d(x, self.fir_kernel)
    h = resampling.nearest_upsample_2d(x)
    return layers.ddpm_conv3x3(h, out_ch) if self.with_conv else h


class Downsample(nn.Module):
  """2x down-sampling of x (B, H, W, C), H and W even, to (B, H/2, W/2, out_ch or C).

  fir=False: a stride-2 3x3 convolution (`Conv_0`) if `with_conv`, else 2x2 average pooling;
  fir=True: the FIR filter `fir_kernel`, then a stride-2 3x3 convolution (`Conv2d_0`) if
  `with_conv`.
  """

  out_ch: Optional[int] = None
  with_conv: bool = False
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)

  @nn.compact
  def __call__(self, x):
    out_ch = self.out_ch or x.shape[-1]
    if self.fir and self.with_conv:
      return resampling.Conv2d(out_ch, 3, down=True, resample_kernel=self.fir_kernel)(x)
    if self.fir:
      return resampling.downsample_2d(x, self.fir_kernel)
    if self.with_conv:
      return layers.ddpm_conv3x3(x, out_ch, stride=2)
    return resampling.box_downsample_2d(x)


class ResnetBlockDDPMpp(nn.Module):
  """DDPM's residual block (Ho et al. 2020) with the ++ options: x (B, H, W, C), temb (B, E) or
  None -> (B, H, W, out_ch or C).

  h = conv3x3(act(GN(x))) + Dense(act(temb)); h = conv3x3(dropout(act(GN(h)))) with the last conv
  initialised at `init_scale`; the skip path is x, or a 3x3 conv (`conv_shortcut`) / NIN of x when
  the channel count changes; output x + h, divided by sqrt(2) with `skip_rescale`.
  """

  act: Callable
  out_ch: Optional[int] = None
  conv_shortcut: bool = False
  dropout: float = 0.1
  skip_rescale: bool = False
  init_scale: float = 0.0

  @nn.compact
  def __call__(self, x, temb=None, train: bool = False):
    out_ch = self.out_ch or x.shape[-1]
    h = layers.ddpm_conv3x3(self.act(group_norm(x)), out_ch)
    if temb is not None:
      h += nn.Dense(out_ch, kernel_init=layers.default_init())(self.act(temb))[:, None, None, :]
    h = nn.Dropout(self.dropout)(self.act(group_norm(h)), deterministic=not train)
    h = layers.ddpm_conv3x3(h, out_ch, init_scale=self.init_scale)
    if x.shape[-1] != out_ch:
      x = layers.ddpm_conv3x3(x, out_ch) if self.conv_shortcut else layers.NIN(out_ch)(x)
    return skip_sum(x, h, self.skip_rescale)


class ResnetBlockBigGANpp(nn.Module):
  """BigGAN's residual block (Brock et al. 2019) with optional 2x up- or down-sampling: x
  (B, H, W, C), temb (B, E) or None -> (B, H', W', out_ch or C), H' = 2H, H/2 or H.

  h = act(GN(x)); both h and x are resampled (FIR filter `fir_kernel` if `fir`, else nearest
  neighbour / 2x2 average); h = conv3x3(h) + Dense(act(temb)); h = conv3x3(dropout(act(GN(h))))
  initialised at `init_scale`; x goes through a 1x1 conv if the channels change or it was
  resampled; output x + h, divided by sqrt(2) with `skip_rescale`.
  """

  act: Callable
  up: bool = False
  down: bool = False
  out_ch: Optional[int] = None
  dropout: float = 0.1
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)
  skip_rescale: bool = True
  init_scale: float = 0.0

  def _resample(self, x):
    if self.up:
      return (resampling.upsample_2d(x, self.fir_kernel) if self.fir
              else resampling.nearest_upsample_2d(x))
    if self.down:
      return (resampling.downsample_2d(x, self.fir_kernel) if self.fir
              else resampling.box_downsample_2d(x))
    return x

  @nn.compact
  def __call__(self, x, temb=None, train: bool = False):
    if self.up and self.down:
      raise ValueError('ResnetBlockBigGANpp cannot both up-sample and down-sample.')
    out_ch = self.out_ch or x.shape[-1]
    in_ch = x.shape[-1]
    h = self._resample(self.act(group_norm(x)))
    x = self._resample(x)
    h = layers.ddpm_conv3x3(h, out_ch)
    if temb is not None:
      h += nn.Dense(out_ch, kernel_init=layers.default_init())(self.act(temb))[:, None, None, :]
    h = nn.Dropout(self.dropout)(self.act(group_norm(h)), deterministic=not train)
    h = layers.ddpm_conv3x3(h, out_ch, init_scale=self.init_scale)
    if in_ch != out_ch or self.up or self.down:
      x = layers.ddpm_conv1x1(x, out_ch)
    return skip_sum(x, h, self.skip_rescale)
