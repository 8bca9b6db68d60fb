"""Normalization layers of the score networks, chosen by `config.model.normalization`.

All layers take NHWC inputs x (B, H, W, C) and normalise each (example, channel) over H and W,
except GroupNorm (flax's own). InstanceNorm++ (Song & Ermon 2019, appendix A) adds back a
learned multiple of each channel's mean, standardised across the channels of the example, because
plain instance normalisation discards the relative colour of the channels. Its noise-conditional
form (NCSN v1) looks its gamma, alpha and beta up per noise level in an `nn.Embed` table.

Parameter names, shapes and initialisers are those of the official implementation.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_sde import config_checks

EPS = 1e-5  # added to every variance before the square root


def near_one_init(key, shape, dtype=jnp.float32):
  """Initialiser N(1, 0.02^2): the scales (gamma, alpha) of VarianceNorm and InstanceNorm++."""
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def instance_normalize(x):
  """(x - mean) / sqrt(var + EPS) with mean and (biased) variance over H, W: (B, H, W, C)."""
  mean = jnp.mean(x, axis=(1, 2), keepdims=True)
  return (x - mean) / jnp.sqrt(jnp.var(x, axis=(1, 2), keepdims=True) + EPS)


def standardized_channel_means(x):
  """The ++ term of InstanceNorm++: each channel's spatial mean mu_c, standardised over the
  channels of its example, (mu_c - mean_c mu) / sqrt(var_c mu + EPS) (biased variance);
  x (B, H, W, C) -> (B, 1, 1, C)."""
  means = jnp.mean(x, axis=(1, 2))
  standardized = ((means - jnp.mean(means, axis=-1, keepdims=True)) /
                  jnp.sqrt(jnp.var(means, axis=-1, keepdims=True) + EPS))
  return standardized[:, None, None, :]


def _channel_param(module: nn.Module, name: str, init, x):
  """A per-channel parameter of shape (1, 1, 1, C) for x (B, H, W, C)."""
  return module.param(name, init, (1, 1, 1, x.shape[-1]))


class InstanceNorm2d(nn.Module):
  """Instance normalisation with a learned per-channel `scale` (init 1) and optional `bias`
  (init 0); x (B, H, W, C) -> same shape."""

  bias: bool = True

  @nn.compact
  def __call__(self, x):
    h = instance_normalize(x) * _channel_param(self, 'scale', jax.nn.initializers.ones, x)
    if self.bias:
      h = h + _channel_param(self, 'bias', jax.nn.initializers.zeros, x)
    return h


class VarianceNorm2d(nn.Module):
  """Divides each channel by its spatial standard deviation sqrt(var + EPS) without centring,
  then multiplies by a learned `scale` ~ N(1, 0.02^2) and optionally adds a `bias` (init 0)."""

  bias: bool = False

  @nn.compact
  def __call__(self, x):
    h = x / jnp.sqrt(jnp.var(x, axis=(1, 2), keepdims=True) + EPS)
    h = h * _channel_param(self, 'scale', near_one_init, x)
    if self.bias:
      h = h + _channel_param(self, 'bias', jax.nn.initializers.zeros, x)
    return h


class InstanceNorm2dPlus(nn.Module):
  """InstanceNorm++ (Song & Ermon 2019, appendix A): gamma * (instance_normalize(x) + alpha *
  standardized_channel_means(x)) + beta, with alpha, gamma ~ N(1, 0.02^2) and beta = 0 at init,
  each of shape (1, 1, 1, C); x (B, H, W, C) -> same shape."""

  bias: bool = True

  @nn.compact
  def __call__(self, x):
    alpha = _channel_param(self, 'alpha', near_one_init, x)
    h = instance_normalize(x) + standardized_channel_means(x) * alpha
    h = h * _channel_param(self, 'gamma', near_one_init, x)
    if self.bias:
      h = h + _channel_param(self, 'beta', jax.nn.initializers.zeros, x)
    return h


class ConditionalInstanceNorm2dPlus(nn.Module):
  """Noise-conditional InstanceNorm++ (NCSN v1): InstanceNorm++ whose gamma, alpha (and beta)
  are rows of an `Embed_0` table indexed by the noise level y.

  The table has shape (num_classes, 3C) laid out [gamma | alpha | beta], initialised N(1, 0.02^2)
  for gamma and alpha and 0 for beta; without `bias` it is (num_classes, 2C), [gamma | alpha].
  x (B, H, W, C), y (B,) integer noise-level indices -> (B, H, W, C).
  """

  num_classes: int = 10
  bias: bool = True

  @nn.compact
  def __call__(self, x, y):
    channels = x.shape[-1]

    def embedding_init(key, shape, dtype=jnp.float32):
      scales = near_one_init(key, (shape[0], 2 * channels), dtype)
      if not self.bias:
        return scales
      return jnp.concatenate([scales, jnp.zeros((shape[0], channels), dtype)], axis=-1)

    num_parts = 3 if self.bias else 2
    table = nn.Embed(num_embeddings=self.num_classes, features=num_parts * channels,
                     embedding_init=embedding_init)
    parts = jnp.split(table(y)[:, None, None, :], num_parts, axis=-1)
    gamma, alpha = parts[0], parts[1]
    h = gamma * (instance_normalize(x) + standardized_channel_means(x) * alpha)
    if self.bias:
      h = h + parts[2]
    return h


_NORMALIZATIONS = {'InstanceNorm': InstanceNorm2d, 'InstanceNorm++': InstanceNorm2dPlus,
                   'VarianceNorm': VarianceNorm2d, 'GroupNorm': nn.GroupNorm}


def get_normalization(config, conditional: bool = False):
  """The normalization module class named by `config.model.normalization` (InstanceNorm,
  InstanceNorm++, VarianceNorm, GroupNorm), to be built as `norm(...)` inside a compact module and
  called as `norm(...)(x)`.

  With `conditional`, the noise-conditional variant, called as `norm()(x, y)`; only InstanceNorm++
  has one, and it takes its number of noise levels from `config.model.num_classes`.
  """
  name = config_checks.choice(config, 'model.normalization', _NORMALIZATIONS)
  if not conditional:
    return _NORMALIZATIONS[name]
  if name != 'InstanceNorm++':
    raise ValueError(f'Config field model.normalization = {name!r} has no noise-conditional '
                     "variant; allowed for noise-conditional models: ['InstanceNorm++'].")
  return functools.partial(ConditionalInstanceNorm2dPlus,
                           num_classes=config_checks.positive_int(config, 'model.num_classes'))
