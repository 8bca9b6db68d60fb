"""Building blocks of the RefineNet score networks NCSN (Song & Ermon 2019) and NCSNv2 (Song &
Ermon 2020): PyTorch-initialised convolutions, the ResNet backbone blocks and the RefineNet
decoder blocks (Lin et al. 2017: residual conv units, multi-resolution fusion, chained residual
pooling). Each `Cond*` block is the noise-conditional twin of the plain one: it normalises with a
conditional normalizer called as `normalizer()(h, y)` (y: (B,) noise-level indices).

All tensors are NHWC. Module class names, parameter names and creation order are those of the
official implementation, so that its parameter trees load unchanged.
"""
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

RESIZE_METHODS = {'bilinear': 'bilinear', 'nearest_neighbor': 'nearest'}


def pytorch_conv_init(kernel_shape: Sequence[int], init_scale: float = 1.0):
  """(kernel_init, bias_init) of PyTorch's default nn.Conv2d initialisation, used by NCSN/NCSNv2.

  Kernel and bias are both U(-b, b) with b = sqrt(init_scale / fan_in) (variance
  init_scale / (3 fan_in)); fan_in = kh * kw * C_in. As in the official port, the bias is the first
  row of a kernel-shaped draw from the bias's own key, so equal keys give equal values.
  """
  init_scale = init_scale if init_scale != 0 else 1e-10
  kernel_init = jax.nn.initializers.variance_scaling(init_scale / 3, 'fan_in', 'uniform')

  def bias_init(key, shape, dtype=jnp.float32):
    return kernel_init(key, tuple(kernel_shape), dtype).reshape(-1)[:shape[0]]

  return kernel_init, bias_init


def ncsn_conv(x, out_planes: int, kernel_size: int, stride: int = 1, bias: bool = True,
              dilation: int = 1, init_scale: float = 1.0):
  """A 'SAME' convolution of x (B, H, W, C) with PyTorch's default initialisation."""
  kernel_init, bias_init = pytorch_conv_init(
      (kernel_size, kernel_size, x.shape[-1], out_planes), init_scale)
  return nn.Conv(out_planes, kernel_size=(kernel_size, kernel_size), strides=(stride, stride),
                 padding='SAME', use_bias=bias, kernel_dilation=(dilation, dilation),
                 kernel_init=kernel_init, bias_init=bias_init)(x)


def ncsn_conv1x1(x, out_planes: int, stride: int = 1, bias: bool = True, dilation: int = 1,
                 init_scale: float = 1.0):
  """1x1 convolution with PyTorch initialisation."""
  return ncsn_conv(x, out_planes, 1, stride, bias, dilation, init_scale)


def ncsn_conv3x3(x, out_planes: int, stride: int = 1, bias: bool = True, dilation: int = 1,
                 init_scale: float = 1.0):
  """3x3 convolution with PyTorch initialisation."""
  return ncsn_conv(x, out_planes, 3, stride, bias, dilation, init_scale)


def mean_pool2x2(x):
  """Average of each 2x2 block: (B, H, W, C) -> (B, H/2, W/2, C); H and W must be even."""
  b, height, width, c = x.shape
  if height % 2 or width % 2:
    raise ValueError(f'2x2 mean pooling needs an even height and width, got {height}x{width}.')
  return x.reshape(b, height // 2, 2, width // 2, 2, c).mean(axis=(2, 4))


def _chained_residual_pooling(x, features: int, n_stages: int, act: Callable, pool: Callable,
                              normalize: Optional[Callable] = None):
  """x <- act(x); then n_stages times: path <- conv3x3(pool(normalize(path))), x <- x + path."""
  x = act(x)
  path = x
  for _ in range(n_stages):
    if normalize is not None:
      path = normalize(path)
    path = ncsn_conv3x3(pool(path), features, bias=False)
    x = path + x
  return x


def _pool5x5(kind: str):
  """A stride-1 'SAME' 5x5 pooling: 'max' (NCSNv2) or 'avg' counting padding (NCSN v1)."""
  if kind == 'max':
    return lambda h: nn.max_pool(h, (5, 5), strides=(1, 1), padding='SAME')
  return lambda h: nn.avg_pool(h, (5, 5), strides=(1, 1), padding='SAME', count_include_pad=True)


class CRPBlock(nn.Module):
  """Chained residual pooling with 5x5 max pooling; (B, H, W, features) -> same shape."""

  features: int
  n_stages: int
  act: Any = nn.relu

  @nn.compact
  def __call__(self, x):
    return _chained_residual_pooling(x, self.features, self.n_stages, self.act, _pool5x5('max'))


class CondCRPBlock(nn.Module):
  """Noise-conditional chained residual pooling: each stage normalises, then 5x5 average-pools."""

  features: int
  n_stages: int
  normalizer: Any
  act: Any = nn.relu

  @nn.compact
  def __call__(self, x, y):
    return _chained_residual_pooling(x, self.features, self.n_stages, self.act, _pool5x5('avg'),
                                     lambda h: self.normalizer()(h, y))


def _residual_conv_units(x, features: int, n_blocks: int, n_stages: int, act: Callable,
                         normalize: Optional[Callable] = None):
  """n_blocks residual units, each x <- x + (n_stages x [normalize, act, conv3x3 no bias])(x)."""
  for _ in range(n_blocks):
    residual = x
    for _ in range(n_stages):
      if normalize is not None:
        x = normalize(x)
      x = ncsn_conv3x3(act(x), features, bias=False)
    x = x + residual
  return x


class RCUBlock(nn.Module):
  """Residual conv units; (B, H, W, features) -> same shape."""

  features: int
  n_blocks: int
  n_stages: int
  act: Any = nn.relu

  @nn.compact
  def __call__(self, x):
    return _residual_conv_units(x, self.features, self.n_blocks, self.n_stages, self.act)


class CondRCUBlock(nn.Module):
  """Noise-conditional residual conv units: a conditional normalisation before every activation."""

  features: int
  n_blocks: int
  n_stages: int
  normalizer: Any
  act: Any = nn.relu

  @nn.compact
  def __call__(self, x, y):
    return _residual_conv_units(x, self.features, self.n_blocks, self.n_stages, self.act,
                                lambda h: self.normalizer()(h, y))


def _multi_resolution_fusion(xs, shape: Sequence[int], features: int, interpolation: str,
                             normalize: Optional[Callable] = None):
  """Sum over inputs of resize(conv3x3(normalize(x_i))) to spatial `shape`: xs[i] (B, H_i, W_i,
  C_i) -> (B, *shape, features). `interpolation`: 'bilinear' (half-pixel centres) or
  'nearest_neighbor'."""
  if interpolation not in RESIZE_METHODS:
    raise ValueError(f'interpolation = {interpolation!r} is not supported; allowed: '
                     f'{sorted(RESIZE_METHODS)}.')
  total = 0.0
  for x in xs:
    if normalize is not None:
      x = normalize(x)
    h = ncsn_conv3x3(x, features, bias=True)
    total = total + jax.image.resize(h, (h.shape[0], *shape, features),
                                     RESIZE_METHODS[interpolation])
  return total


class MSFBlock(nn.Module):
  """Multi-resolution fusion of a list of feature maps into (B, *shape, features)."""

  shape: Sequence[int]
  features: int
  interpolation: str = 'bilinear'

  @nn.compact
  def __call__(self, xs):
    return _multi_resolution_fusion(xs, self.shape, self.features, self.interpolation)


class CondMSFBlock(nn.Module):
  """Noise-conditional multi-resolution fusion: each input is normalised before its conv."""

  shape: Sequence[int]
  features: int
  normalizer: Any
  interpolation: str = 'bilinear'

  @nn.compact
  def __call__(self, xs, y):
    return _multi_resolution_fusion(xs, self.shape, self.features, self.interpolation,
                                    lambda h: self.normalizer()(h, y))


class RefineBlock(nn.Module):
  """RefineNet block: 2x2 RCUs per input, fusion to `output_shape` (skipped at the `start` block,
  which takes one input), chained residual pooling, then output RCUs (3 at the `end` block, else
  1). xs: list of (B, H_i, W_i, C_i) -> (B, *output_shape, features)."""

  output_shape: Sequence[int]
  features: int
  act: Any = nn.relu
  interpolation: str = 'bilinear'
  start: bool = False
  end: bool = False

  @nn.compact
  def __call__(self, xs):
    hs = [RCUBlock(x.shape[-1], n_blocks=2, n_stages=2, act=self.act)(x) for x in xs]
    if self.start:
      h = hs[0]
    else:
      h = MSFBlock(self.output_shape, self.features, self.interpolation)(hs)
    h = CRPBlock(self.features, n_stages=2, act=self.act)(h)
    return RCUBlock(self.features, n_blocks=3 if self.end else 1, n_stages=2, act=self.act)(h)


class CondRefineBlock(nn.Module):
  """Noise-conditional RefineBlock (NCSN v1): the same layout with CondRCUBlock, CondMSFBlock and
  CondCRPBlock. xs: list of (B, H_i, W_i, C_i), y (B,) -> (B, *output_shape, features)."""

  output_shape: Sequence[int]
  features: int
  normalizer: Any
  act: Any = nn.relu
  interpolation: str = 'bilinear'
  start: bool = False
  end: bool = False

  @nn.compact
  def __call__(self, xs, y):
    hs = [CondRCUBlock(x.shape[-1], n_blocks=2, n_stages=2, normalizer=self.normalizer,
                       act=self.act)(x, y) for x in xs]
    if self.start:
      h = hs[0]
    else:
      h = CondMSFBlock(self.output_shape, self.features, self.normalizer,
                       self.interpolation)(hs, y)
    h = CondCRPBlock(self.features, n_stages=2, normalizer=self.normalizer, act=self.act)(h, y)
    return CondRCUBlock(self.features, n_blocks=3 if self.end else 1, n_stages=2,
                        normalizer=self.normalizer, act=self.act)(h, y)


class ConvMeanPool(nn.Module):
  """'SAME' convolution (flax's default init: LeCun normal kernel, zero bias) followed by 2x2 mean
  pooling: (B, H, W, C) -> (B, H/2, W/2, output_dim)."""

  output_dim: int
  kernel_size: int = 3
  biases: bool = True

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    return mean_pool2x2(nn.Conv(self.output_dim, (k, k), padding='SAME', use_bias=self.biases)(x))


class MeanPoolConv(nn.Module):
  """2x2 mean pooling followed by a 'SAME' convolution (flax's default init):
  (B, H, W, C) -> (B, H/2, W/2, output_dim)."""

  output_dim: int
  kernel_size: int = 3
  biases: bool = True

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    return nn.Conv(self.output_dim, (k, k), padding='SAME', use_bias=self.biases)(mean_pool2x2(x))


def _residual_block(x, normalize: Callable, output_dim: int, resample: Optional[str],
                    act: Callable, dilation: int):
  """Pre-activation residual block of the NCSN backbones: (B, H, W, C) -> (B, H', W', output_dim).

  resample='down' halves H and W (conv, then ConvMeanPool; the shortcut is a 1x1 ConvMeanPool)
  when dilation == 1; with dilation > 1 both convs are dilated and the resolution is kept.
  resample=None keeps the resolution; the shortcut is the identity when C == output_dim, else a
  1x1 conv (3x3 dilated conv when dilated).
  """
  if resample not in (None, 'down'):
    raise ValueError(f"resample = {resample!r} is not supported; allowed: None, 'down'.")
  h = act(normalize(x))
  if resample == 'down':
    h = act(normalize(ncsn_conv3x3(h, h.shape[-1], dilation=dilation)))
    if dilation > 1:
      h = ncsn_conv3x3(h, output_dim, dilation=dilation)
      shortcut = ncsn_conv3x3(x, output_dim, dilation=dilation)
    else:
      h = ConvMeanPool(output_dim=output_dim)(h)
      shortcut = ConvMeanPool(output_dim=output_dim, kernel_size=1)(x)
    return h + shortcut

  if output_dim == x.shape[-1]:
    shortcut = x
  elif dilation > 1:
    shortcut = ncsn_conv3x3(x, output_dim, dilation=dilation)
  else:
    shortcut = ncsn_conv1x1(x, output_dim)
  h = act(normalize(ncsn_conv3x3(h, output_dim, dilation=dilation)))
  h = ncsn_conv3x3(h, output_dim, dilation=dilation)
  return h + shortcut


class ResidualBlock(nn.Module):
  """Backbone residual block of NCSNv2 (see `_residual_block`); `normalization` is a module
  class built as `normalization()` and called on (B, H, W, C)."""

  output_dim: int
  normalization: Any
  resample: Optional[str] = None
  act: Any = nn.elu
  dilation: int = 1

  @nn.compact
  def __call__(self, x):
    return _residual_block(x, lambda h: self.normalization()(h), self.output_dim, self.resample,
                           self.act, self.dilation)


class ConditionalResidualBlock(nn.Module):
  """Noise-conditional backbone residual block of NCSN v1: normalisations called as
  `normalization()(h, y)` with y (B,) noise-level indices."""

  output_dim: int
  normalization: Any
  resample: Optional[str] = None
  act: Any = nn.elu
  dilation: int = 1

  @nn.compact
  def __call__(self, x, y):
    return _residual_block(x, lambda h: self.normalization()(h, y), self.output_dim,
                           self.resample, self.act, self.dilation)

