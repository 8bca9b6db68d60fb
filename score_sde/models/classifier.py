"""The noise-conditional Wide-ResNet classifier of class-conditional sampling (paper, Sec. 5 and
App. I.1; Zagoruyko & Komodakis 2016), with the parameter tree of the classifier released with the
official code, so that its checkpoint loads unchanged.

The released classifier is WRN-28-10 on CIFAR-10: `classifier.blocks_per_group = 4`,
`classifier.channel_multiplier = 10`, `classifier.num_classes = 10`, 32x32x3 inputs. It was
trained on VE-perturbed CIFAR-10 images in [0, 1], normalised per channel by the dataset's mean
and standard deviation, and is conditioned on sigma(t) (`get_logit_fn`).

The official layers named `*_bn` are GroupNorm layers (no batch statistics), so the classifier
has only a 'params' collection and behaves the same in training and evaluation.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_sde import config_checks
from score_sde import sde as sde_lib
from score_sde.models import init_once, layers

# Per-channel mean and standard deviation of the CIFAR-10 training images in [0, 1].
CIFAR10_MEAN = (0.49139968, 0.48215841, 0.44653091)
CIFAR10_STD = (0.24703223, 0.24348513, 0.26158784)

# He initialisation, fan-out mode, normal: Var = 2 / (3 * 3 * out_channels).
CONV_INIT = jax.nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def _logit_init(key, shape, dtype=jnp.float32):
  """Kernel (features, num_classes) of the last dense layer: U(-1, 1) / sqrt(num_classes)."""
  return jax.random.uniform(key, shape, dtype, -1.0, 1.0) * shape[1]**-0.5


def _norm_relu(x, name: str):
  """relu(GroupNorm(x)) with min(C / 4, 32) groups and epsilon 1e-5, x (B, H, W, C)."""
  return nn.relu(nn.GroupNorm(num_groups=min(x.shape[-1] // 4, 32), epsilon=1e-5, name=name)(x))


def _conv3x3(x, channels: int, strides: int, name: str):
  """Bias-free 'SAME' 3x3 convolution with He (fan-out) initialisation."""
  return nn.Conv(channels, (3, 3), (strides, strides), padding='SAME', use_bias=False,
                 kernel_init=CONV_INIT, name=name)(x)


def _shortcut(x, out_shape):
  """x (B, H, W, C) matched to out_shape (B, H/s, W/s, C') when C' != C: s x s average pooling
  and zero channels appended; x itself when the channels agree."""
  if x.shape[-1] == out_shape[-1]:
    return x
  stride = x.shape[2] // out_shape[2]
  x = nn.avg_pool(x, (stride, stride), (stride, stride))
  return jnp.pad(x, [(0, 0), (0, 0), (0, 0), (0, out_shape[-1] - x.shape[-1])])


class WideResnetBlock(nn.Module):
  """Pre-activation residual block x (B, H, W, C) and temb (B, T) -> (B, H/s, W/s, channels).

  h = conv1(relu(init_bn(x))) + Dense_0(swish(temb)) (per channel); out = conv2(relu(bn_2(h)));
  returns out + shortcut. The shortcut starts from x, or from relu(init_bn(x)) when
  `activate_before_residual`; it is pooled and zero-padded when the channels change.
  """

  channels: int
  strides: int = 1
  activate_before_residual: bool = False

  @nn.compact
  def __call__(self, x, temb):
    activated = _norm_relu(x, 'init_bn')
    if self.activate_before_residual:
      x = activated
    h = _conv3x3(activated, self.channels, self.strides, 'conv1')
    h = h + nn.Dense(self.channels)(nn.swish(temb))[:, None, None, :]
    h = _conv3x3(_norm_relu(h, 'bn_2'), self.channels, 1, 'conv2')
    return h + _shortcut(x, h.shape)


class WideResnetGroup(nn.Module):
  """`blocks_per_group` WideResnetBlocks of `channels`; the first one strides by `strides` and
  activates before the residual when `activate_before_residual`."""

  blocks_per_group: int
  channels: int
  strides: int = 1
  activate_before_residual: bool = False

  @nn.compact
  def __call__(self, x, temb):
    for i in range(self.blocks_per_group):
      first = i == 0
      x = WideResnetBlock(self.channels, self.strides if first else 1,
                          self.activate_before_residual and first)(x, temb)
    return x


class WideResnet(nn.Module):
  """Noise-conditional WRN-(6 blocks_per_group + 4)-(channel_multiplier): images x (B, H, W, C)
  and noise levels sigmas (B,) > 0 -> logits (B, num_classes). H and W divisible by 4.

  Each image is standardised (zero mean, unit standard deviation, the deviation floored at
  1/sqrt(H W C)); log(sigma) is embedded by 128 Gaussian Fourier features of scale 16 and two
  dense layers of 512 units (swish between them); a 16-channel conv is followed by three groups
  of WideResnetBlocks of 16, 32 and 64 times channel_multiplier channels at strides 1, 2, 2;
  then GroupNorm, relu, global average pooling and a dense layer.
  """

  blocks_per_group: int
  channel_multiplier: int
  num_classes: int
  embedding_size: int = 128
  fourier_scale: float = 16.0

  @nn.compact
  def __call__(self, x, sigmas):
    std_floor = 1.0 / np.sqrt(np.prod(x.shape[1:]))
    x = ((x - jnp.mean(x, axis=(1, 2, 3), keepdims=True)) /
         jnp.maximum(jnp.std(x, axis=(1, 2, 3), keepdims=True), std_floor))
    temb = layers.GaussianFourierProjection(self.embedding_size, self.fourier_scale)(
        jnp.log(sigmas))
    temb = nn.Dense(4 * self.embedding_size)(temb)
    temb = nn.Dense(4 * self.embedding_size)(nn.swish(temb))

    h = _conv3x3(x, 16, 1, 'init_conv')
    for i, width in enumerate((16, 32, 64)):
      h = WideResnetGroup(self.blocks_per_group, width * self.channel_multiplier,
                          1 if i == 0 else 2, activate_before_residual=i == 0)(h, temb)
    h = jnp.mean(_norm_relu(h, 'pre-pool-bn'), axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=_logit_init)(h)


def get_classifier(config) -> WideResnet:
  """The classifier of config.classifier.{blocks_per_group, channel_multiplier, num_classes}."""
  return WideResnet(
      blocks_per_group=config_checks.positive_int(config, 'classifier.blocks_per_group'),
      channel_multiplier=config_checks.positive_int(config, 'classifier.channel_multiplier'),
      num_classes=config_checks.positive_int(config, 'classifier.num_classes'))


def init_classifier(key: jax.Array, config, data_shape: tuple) -> tuple:
  """Builds the classifier and initialises it on one image of ones of shape data_shape at
  sigma = 1. Returns (classifier, variables) with variables = {'params': ...}."""
  classifier = get_classifier(config)
  variables = init_once.init_variables(classifier, key, jnp.ones((1, *data_shape)), jnp.ones((1,)))
  return classifier, variables


def get_logit_fn(classifier: WideResnet, variables, sde: sde_lib.SDE, mean=CIFAR10_MEAN,
                 std=CIFAR10_STD):
  """logit_fn(x, t) -> logits (B, num_classes) of the state x (B, H, W, C) of a VE SDE at times
  t (B,), for `controllable.conditional_score_fn`.

  As in the official class-conditional sampler, the classifier sees (x - mean) / std per channel,
  with x in the data space of [0, 1] images, and the noise level sigma(t) of the VE SDE.
  """
  if not isinstance(sde, sde_lib.VESDE):
    raise ValueError(f'The noise-conditional classifier is conditioned on the VE noise level '
                     f'sigma(t) and needs a VESDE; got {type(sde).__name__}.')
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)

  def logit_fn(x, t):
    sigmas = sde.marginal_prob(jnp.zeros_like(x), t)[1]
    return classifier.apply(variables, (x - mean) / std, sigmas)

  return logit_fn
