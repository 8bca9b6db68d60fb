"""Normalization layers against float64 numpy re-computations, and their initialisers."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from score_sde.models import normalization as norm_lib

EPS = 1e-5
B, H, W, C = 3, 5, 4, 6


def np_instance_normalize(x):
  mean = x.mean(axis=(1, 2), keepdims=True)
  var = ((x - mean)**2).mean(axis=(1, 2), keepdims=True)
  return (x - mean) / np.sqrt(var + EPS)


def np_standardized_means(x):
  """Per-example channel means mu (B, C), standardised over C with the biased variance."""
  mu = x.mean(axis=(1, 2))
  centred = mu - mu.mean(axis=1, keepdims=True)
  return (centred / np.sqrt((centred**2).mean(axis=1, keepdims=True) + EPS))[:, None, None, :]


@pytest.fixture(scope='module')
def x():
  rng = np.random.default_rng(0)
  # Channels with different offsets and scales, so that the ++ term is far from trivial.
  return (rng.normal(size=(B, H, W, C)) * rng.uniform(0.5, 3, size=C) +
          rng.normal(size=(B, 1, 1, C)) * 4).astype(np.float32)


def random_params(module, *args):
  """The module's parameters in creation order, every leaf replaced by standard normal values."""
  keys = iter(jax.random.split(jax.random.PRNGKey(1), 16))

  def randomize(tree):
    return {name: randomize(value) if isinstance(value, dict) else
            jax.random.normal(next(keys), value.shape) for name, value in tree.items()}

  return randomize(module.init(jax.random.PRNGKey(0), *args)['params'])


def apply(module, params, *args):
  return np.asarray(module.apply({'params': params}, *args), np.float64)


def shapes(params):
  return {name: value.shape for name, value in params.items()}


def config(normalization, **model):
  return ml_collections.ConfigDict({'model': dict(normalization=normalization, **model)})


@pytest.mark.parametrize('bias', [True, False])
def test_instance_norm_matches_numpy(x, bias):
  module = norm_lib.InstanceNorm2d(bias=bias)
  params = random_params(module, x)
  assert shapes(params) == ({'scale': (1, 1, 1, C), 'bias': (1, 1, 1, C)} if bias else
                            {'scale': (1, 1, 1, C)})
  expected = np_instance_normalize(x.astype(np.float64)) * np.asarray(params['scale'])
  if bias:
    expected = expected + np.asarray(params['bias'])
  np.testing.assert_allclose(apply(module, params, x), expected, atol=2e-5)


@pytest.mark.parametrize('bias', [False, True])
def test_variance_norm_divides_by_std_without_centring(x, bias):
  module = norm_lib.VarianceNorm2d(bias=bias)
  params = random_params(module, x)
  assert list(params) == (['scale', 'bias'] if bias else ['scale'])
  x64 = x.astype(np.float64)
  var = x64.var(axis=(1, 2), keepdims=True)
  expected = x64 / np.sqrt(var + EPS) * np.asarray(params['scale'])
  if bias:
    expected = expected + np.asarray(params['bias'])
  np.testing.assert_allclose(apply(module, params, x), expected, atol=2e-5)


@pytest.mark.parametrize('bias', [True, False])
def test_instance_norm_plus_matches_numpy(x, bias):
  module = norm_lib.InstanceNorm2dPlus(bias=bias)
  params = random_params(module, x)
  assert list(params) == (['alpha', 'gamma', 'beta'] if bias else ['alpha', 'gamma'])
  assert all(v.shape == (1, 1, 1, C) for v in params.values())
  alpha, gamma = np.asarray(params['alpha']), np.asarray(params['gamma'])
  x64 = x.astype(np.float64)
  expected = gamma * (np_instance_normalize(x64) + alpha * np_standardized_means(x64))
  if bias:
    expected = expected + np.asarray(params['beta'])
  out = apply(module, params, x)
  np.testing.assert_allclose(out, expected, atol=5e-5)
  # The ++ term is what survives in the output's channel means: gamma alpha mu~ (+ beta).
  beta = np.asarray(params['beta']) if bias else 0.0
  np.testing.assert_allclose(out.mean(axis=(1, 2), keepdims=True),
                             gamma * alpha * np_standardized_means(x64) + beta, atol=5e-5)


@pytest.mark.parametrize('bias', [True, False])
def test_conditional_instance_norm_plus_uses_each_examples_class_row(x, bias):
  num_classes = 5
  module = norm_lib.ConditionalInstanceNorm2dPlus(num_classes=num_classes, bias=bias)
  y = jnp.array([4, 0, 4])
  params = random_params(module, x, y)
  table = np.asarray(params['Embed_0']['embedding'], np.float64)
  assert table.shape == (num_classes, (3 if bias else 2) * C)
  rows = table[np.asarray(y)][:, None, None, :]
  gamma, alpha = rows[..., :C], rows[..., C:2 * C]
  x64 = x.astype(np.float64)
  expected = gamma * (np_instance_normalize(x64) + alpha * np_standardized_means(x64))
  if bias:
    expected = expected + rows[..., 2 * C:]
  np.testing.assert_allclose(apply(module, params, x, y), expected, atol=5e-5)


def test_initialisers_match_the_official_distributions():
  wide = jnp.zeros((1, 2, 2, 4096))
  key = jax.random.PRNGKey(0)

  def check_near_one(values):
    values = np.asarray(values).ravel()
    assert abs(values.mean() - 1) < 2e-3 and abs(values.std() - 0.02) < 2e-3

  plus = norm_lib.InstanceNorm2dPlus().init(key, wide)['params']
  check_near_one(plus['alpha'])
  check_near_one(plus['gamma'])
  assert not np.allclose(plus['alpha'], plus['gamma'])
  np.testing.assert_array_equal(plus['beta'], 0)
  plain = norm_lib.InstanceNorm2d().init(key, wide)['params']
  np.testing.assert_array_equal(plain['scale'], 1)
  np.testing.assert_array_equal(plain['bias'], 0)
  check_near_one(norm_lib.VarianceNorm2d().init(key, wide)['params']['scale'])

  y = jnp.zeros((1,), jnp.int32)
  table = norm_lib.ConditionalInstanceNorm2dPlus(num_classes=3).init(
      key, wide, y)['params']['Embed_0']['embedding']
  check_near_one(table[:, :2 * 4096])
  np.testing.assert_array_equal(table[:, 2 * 4096:], 0)
  table = norm_lib.ConditionalInstanceNorm2dPlus(num_classes=3, bias=False).init(
      key, wide, y)['params']['Embed_0']['embedding']
  assert table.shape == (3, 2 * 4096)
  check_near_one(table)


def test_get_normalization_choices():
  expected = {'InstanceNorm': norm_lib.InstanceNorm2d,
              'InstanceNorm++': norm_lib.InstanceNorm2dPlus,
              'VarianceNorm': norm_lib.VarianceNorm2d, 'GroupNorm': nn.GroupNorm}
  for name, cls in expected.items():
    assert norm_lib.get_normalization(config(name)) is cls
  conditional = norm_lib.get_normalization(config('InstanceNorm++', num_classes=7), True)
  assert isinstance(conditional, functools.partial)
  assert isinstance(conditional(), norm_lib.ConditionalInstanceNorm2dPlus)
  assert conditional().num_classes == 7


@pytest.mark.parametrize('cfg, conditional, message', [
    (config('BatchNorm'), False, "model.normalization = 'BatchNorm'"),
    (config('GroupNorm', num_classes=3), True, 'no noise-conditional variant'),
    (config('InstanceNorm++'), True, 'model.num_classes is missing'),
    (config('InstanceNorm++', num_classes=0), True, 'model.num_classes = 0'),
])
def test_get_normalization_refuses_bad_configs(cfg, conditional, message):
  with pytest.raises(ValueError, match=message.replace('+', r'\+')):
    norm_lib.get_normalization(cfg, conditional)
