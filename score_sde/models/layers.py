"""Layers shared by the score networks: activations, DDPM-initialised convolutions, NIN and the
noise-level embeddings. All tensors are channels-last (NHWC).

Parameter names and creation order follow the official implementation, so that its parameter
trees load unchanged: the convolution helpers create an `nn.Conv` inside the calling module
(`Conv_0`, `Conv_1`, ...), NIN holds `W` (in, out) and `b`.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_sde import config_checks

NONLINEARITIES = {'elu': nn.elu, 'relu': nn.relu, 'lrelu': lambda x: nn.leaky_relu(x, 0.2),
                  'swish': nn.swish}


def get_act(config):
  """The activation named by `config.model.nonlinearity` (elu, relu, lrelu (slope 0.2), swish)."""
  return NONLINEARITIES[config_checks.choice(config, 'model.nonlinearity', NONLINEARITIES)]


def default_init(scale: float = 1.0):
  """DDPM's initializer: variance scaling, fan_avg, uniform, Var = scale / fan_avg.

  A scale of 0 (the official `init_scale=0.` of output layers) becomes 1e-10, so that the weights
  are tiny but not exactly zero.
  """
  return jax.nn.initializers.variance_scaling(scale if scale != 0 else 1e-10, 'fan_avg', 'uniform')


def ddpm_conv(x, out_planes: int, kernel_size: int, stride: int = 1, bias: bool = True,
              dilation: int = 1, init_scale: float = 1.0):
  """A 'SAME' convolution of x (B, H, W, C) with DDPM initialisation and zero bias."""
  return nn.Conv(out_planes, kernel_size=(kernel_size, kernel_size), strides=(stride, stride),
                 padding='SAME', use_bias=bias, kernel_dilation=(dilation, dilation),
                 kernel_init=default_init(init_scale),
                 bias_init=jax.nn.initializers.zeros)(x)


def ddpm_conv1x1(x, out_planes: int, stride: int = 1, bias: bool = True, dilation: int = 1,
                 init_scale: float = 1.0):
  """1x1 convolution with DDPM initialisation."""
  return ddpm_conv(x, out_planes, 1, stride, bias, dilation, init_scale)


def ddpm_conv3x3(x, out_planes: int, stride: int = 1, bias: bool = True, dilation: int = 1,
                 init_scale: float = 1.0):
  """3x3 convolution with DDPM initialisation."""
  return ddpm_conv(x, out_planes, 3, stride, bias, dilation, init_scale)


def get_sigmas(config) -> np.ndarray:
  """The noise levels of a discrete VE model, (num_scales,) float32 from config.model.sigma_max
  down to sigma_min, geometric; network label i stands for sigmas[i]."""
  return np.geomspace(config.model.sigma_max, config.model.sigma_min,
                      config.model.num_scales).astype(np.float32)


def label_sigmas(config, labels: jax.Array) -> jax.Array:
  """The noise level sigma (B,) that each network label (B,) stands for, for `scale_by_sigma`
  (Song & Ermon 2020, technique 3): a continuous VE model is fed sigma itself, a discrete one the
  index i of sigmas[i] = get_sigmas(config)[i]. Other SDEs have no sigma ladder: ValueError."""
  sde = config_checks.get(config, 'training.sde')
  if sde != 'vesde':
    raise ValueError('Config field model.scale_by_sigma = True divides the output by the VE noise '
                     f"level and needs training.sde = 'vesde'; got {sde!r}.")
  if config_checks.boolean(config, 'training.continuous'):
    return labels
  return jnp.asarray(get_sigmas(config))[labels.astype(jnp.int32)]


class NIN(nn.Module):
  """Network-in-network: a per-pixel dense layer x (..., C) -> (..., num_units), params W (C,
  num_units) with DDPM initialisation at `init_scale` and b (num_units,) zeros."""

  num_units: int
  init_scale: float = 0.1

  @nn.compact
  def __call__(self, x):
    W = self.param('W', default_init(self.init_scale), (x.shape[-1], self.num_units))
    b = self.param('b', jax.nn.initializers.zeros, (self.num_units,))
    return jnp.tensordot(x, W, axes=1) + b


def get_timestep_embedding(timesteps: jax.Array, embedding_dim: int,
                           max_positions: int = 10000) -> jax.Array:
  """Sinusoidal embedding of (B,) real timesteps into (B, embedding_dim) (Vaswani et al. 2017,
  as used by DDPM): [sin(t w_k), cos(t w_k)] with w_k = max_positions^(-k / (embedding_dim/2 - 1))."""
  half_dim = embedding_dim // 2
  frequencies = jnp.exp(-math.log(max_positions) / (half_dim - 1) * jnp.arange(half_dim))
  angles = timesteps.astype(jnp.float32)[:, None] * frequencies[None, :]
  embedding = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1)
  if embedding_dim % 2 == 1:
    embedding = jnp.pad(embedding, [(0, 0), (0, 1)])
  return embedding


class GaussianFourierProjection(nn.Module):
  """Random Fourier features [sin(2 pi x W), cos(2 pi x W)] of (B,) inputs, W ~ N(0, scale^2)
  drawn at initialisation and never trained (Tancik et al. 2020); output (B, 2 embedding_size)."""

  embedding_size: int = 256
  scale: float = 1.0

  @nn.compact
  def __call__(self, x):
    W = self.param('W', jax.nn.initializers.normal(stddev=self.scale), (self.embedding_size,))
    W = jax.lax.stop_gradient(W)
    angles = x[:, None] * W[None, :] * 2 * jnp.pi
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


# Blocks of the DDPM U-Net (Ho et al. 2020, App. B).


class AttnBlock(nn.Module):
  """DDPM self-attention over the H*W positions of x (B, H, W, C) -> (B, H, W, C).

  h = normalize(x); q, k, v = NIN_0(h), NIN_1(h), NIN_2(h); each position attends to all H*W
  positions with weights softmax(q k^T / sqrt(C)); the result goes through NIN_3 (initialised at
  scale ~0, so the block starts as the identity) and is added to x.

  Attributes:
    normalize: the normalization module class (from normalization.get_normalization).
  """

  normalize: type

  @nn.compact
  def __call__(self, x):
    batch, height, width, channels = x.shape
    h = self.normalize()(x)
    q = NIN(channels)(h).reshape(batch, height * width, channels)
    k = NIN(channels)(h).reshape(batch, height * width, channels)
    v = NIN(channels)(h).reshape(batch, height * width, channels)
    weights = jax.nn.softmax(jnp.einsum('bic,bjc->bij', q, k) * channels**-0.5, axis=-1)
    h = jnp.einsum('bij,bjc->bic', weights, v).reshape(x.shape)
    return x + NIN(channels, init_scale=0.0)(h)


class Upsample(nn.Module):
  """Nearest-neighbour 2x upsampling x (B, H, W, C) -> (B, 2H, 2W, C), followed by a 3x3 DDPM
  convolution (Conv_0) when `with_conv`."""

  with_conv: bool = False

  @nn.compact
  def __call__(self, x):
    batch, height, width, channels = x.shape
    h = jnp.broadcast_to(x[:, :, None, :, None, :], (batch, height, 2, width, 2, channels))
    h = h.reshape(batch, 2 * height, 2 * width, channels)
    if self.with_conv:
      h = ddpm_conv3x3(h, channels)
    return h


class Downsample(nn.Module):
  """2x downsampling x (B, H, W, C) -> (B, H/2, W/2, C) of even H, W: a stride-2 3x3 DDPM
  convolution (Conv_0) with 'SAME' padding (one row/column of zeros after the last, none before)
  when `with_conv`, else the mean of each 2x2 block."""

  with_conv: bool = False

  @nn.compact
  def __call__(self, x):
    height, width, channels = x.shape[1:]
    if height % 2 or width % 2:
      raise ValueError(f'Downsample needs even spatial sizes; got {height}x{width}.')
    if self.with_conv:
      return ddpm_conv3x3(x, channels, stride=2)
    return nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))


class ResnetBlockDDPM(nn.Module):
  """DDPM residual block x (B, H, W, C) -> (B, H, W, out_ch).

  h = Conv_0(act(normalize(x))) + Dense_0(act(temb)) (per channel, when temb (B, T) is given);
  h = Conv_1(dropout(act(normalize(h)))) with Conv_1 initialised at scale ~0; returns
  shortcut(x) + h, where the shortcut is the identity when C == out_ch, else a 3x3 conv (Conv_2,
  `conv_shortcut`) or a per-pixel dense layer (NIN_0).

  Attributes:
    act: the activation function.
    normalize: the normalization module class (from normalization.get_normalization).
    out_ch: output channels (None: C).
    conv_shortcut: 3x3 conv instead of NIN on the shortcut when the channels change.
    dropout: dropout rate, applied when `train` (the official default 0.5).
  """

  act: object
  normalize: type
  out_ch: int | None = None
  conv_shortcut: bool = False
  dropout: float = 0.5

  @nn.compact
  def __call__(self, x, temb=None, train: bool = False):
    channels = x.shape[-1]
    out_ch = self.out_ch or channels
    h = ddpm_conv3x3(self.act(self.normalize()(x)), out_ch)
    if temb is not None:
      h = h + nn.Dense(out_ch, kernel_init=default_init())(self.act(temb))[:, None, None, :]
    h = self.act(self.normalize()(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = ddpm_conv3x3(h, out_ch, init_scale=0.0)
    if channels != out_ch:
      x = ddpm_conv3x3(x, out_ch) if self.conv_shortcut else NIN(out_ch)(x)
    return x + h
