"""NCSN / NCSNv2: the RefineNet blocks against numpy re-computations and the tiny models against
outputs of the official implementation (test_configs.py checks the full-size official trees).

tests/data/ncsn_official_outputs.npz: for each model at `tiny_config`, the official [path, shape]
list in creation order (`<name>/tree`, JSON) and the official outputs with and without
scale_by_sigma (`<name>/output`, `<name>/unscaled_output`) on `x`, `labels`, with the parameters
`fixture_params(tree)`. It was written by the official code (a scratch copy in which NCSN v1's
call of its conditional normalizer is fixed and model.num_classes = model.num_scales).
"""
import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from score_sde import models
from score_sde.models import refinenet

DATA = pathlib.Path(__file__).parent / 'data'
PARAM_SEED = 0
CASES = {'ncsn': {}, 'ncsnv2_64': {},
         'ncsnv2_128': dict(interpolation='nearest_neighbor', centered=True), 'ncsnv2_256': {}}


def tiny_config(name, interpolation='bilinear', centered=False, scale_by_sigma=True):
  """nf 2, InstanceNorm++, 7 noise levels from 50 down to 0.01 (inputs: 8x8x3)."""
  return ml_collections.ConfigDict({
      'model': dict(name=name, nf=2, nonlinearity='elu', normalization='InstanceNorm++',
                    interpolation=interpolation, scale_by_sigma=scale_by_sigma, sigma_min=0.01,
                    sigma_max=50.0, num_scales=7, num_classes=7),
      'data': dict(centered=centered),
      'training': dict(sde='vesde', continuous=False)})


def fixture_params(paths_and_shapes, seed=PARAM_SEED):
  """Nested params from numpy draws in the given order: kernels U(+-sqrt(3 / fan_in)),
  biases/betas U(+-0.1), scales and embeddings U(0.7, 1.3) (so that the noise levels' rows
  differ)."""
  rng = np.random.default_rng(seed)
  params = {}
  for path, shape in paths_and_shapes:
    name = path.split('/')[-1]
    if name == 'kernel':
      value = rng.uniform(-1, 1, shape) * np.sqrt(3 / np.prod(shape[:-1]))
    elif name in ('bias', 'beta'):
      value = rng.uniform(-0.1, 0.1, shape)
    else:
      value = rng.uniform(0.7, 1.3, shape)
    node = params
    for part in path.split('/')[:-1]:
      node = node.setdefault(part, {})
    node[name] = jnp.asarray(value, jnp.float32)
  return params


def walk(tree, prefix=''):
  for name, value in tree.items():
    path = f'{prefix}/{name}' if prefix else name
    if isinstance(value, dict):
      yield from walk(value, path)
    else:
      yield path, list(value.shape)


def init_tree(module, *args):
  """[path, shape] of module.init(key, *args)['params'] in creation order, recorded while tracing
  (jax.eval_shape, no compute; the dict it returns would be sorted by key)."""
  created = []

  def init():
    variables = module.init(jax.random.PRNGKey(0), *args)
    created.extend(walk(variables['params']))
    return variables

  jax.eval_shape(init)
  return created


# ----------------------------------------------------------------------------------------------
# Blocks against numpy.

def np_conv(x, kernel, bias=None, dilation=1):
  """'SAME' stride-1 convolution, NHWC x and HWIO kernel (odd size), in float64."""
  k = kernel.shape[0]
  pad = dilation * (k - 1) // 2
  height, width = x.shape[1:3]
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  out = sum(xp[:, i * dilation:i * dilation + height, j * dilation:j * dilation + width]
            @ kernel[i, j] for i in range(k) for j in range(k))
  return out if bias is None else out + bias


def np_pool5x5(x, kind):
  """5x5 stride-1 'SAME' pooling: max (pad -inf) or average counting the zero padding."""
  height, width = x.shape[1:3]
  xp = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=-np.inf if kind == 'max' else 0)
  windows = np.stack([xp[:, i:i + height, j:j + width] for i in range(5) for j in range(5)])
  return windows.max(0) if kind == 'max' else windows.mean(0)


def np_mean_pool(x):
  return (x[:, ::2, ::2] + x[:, 1::2, ::2] + x[:, ::2, 1::2] + x[:, 1::2, 1::2]) / 4


def np_upsample_bilinear(x, height, width):
  """Bilinear resize with half-pixel centres and clamped edges (upsampling only)."""

  def weights(n_in, n_out):
    coord = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(coord).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    matrix = np.zeros((n_out, n_in))
    matrix[np.arange(n_out), lo] += 1 - (coord - lo)
    matrix[np.arange(n_out), hi] += coord - lo
    return matrix

  return np.einsum('ph,qw,bhwc->bpqc', weights(x.shape[1], height), weights(x.shape[2], width), x)


def np_elu(x):
  return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


class AddLabel(nn.Module):
  """A parameter-free stand-in for a conditional normalizer: x + y (per example)."""

  @nn.compact
  def __call__(self, x, y):
    return x + y[:, None, None, None]


class Double(nn.Module):
  """A parameter-free stand-in for a normalizer: 2 x."""

  @nn.compact
  def __call__(self, x):
    return 2 * x


def random_block_params(module, *args):
  """The block's params replaced by numpy draws, as jnp arrays and as float64 numpy arrays."""
  params = fixture_params(init_tree(module, *args), seed=1)
  return params, jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64), params)


X8 = np.random.default_rng(5).normal(size=(2, 8, 8, 2)).astype(np.float32)
X4 = np.random.default_rng(6).normal(size=(2, 4, 4, 4)).astype(np.float32)
Y = jnp.array([0.5, -1.0])


def conv_params(tree, name):
  return tree[name]['kernel'], tree[name].get('bias')


def test_conv_mean_pool_and_mean_pool_conv():
  for cls, expected in [
      (refinenet.ConvMeanPool, lambda p, x: np_mean_pool(np_conv(x, *conv_params(p, 'Conv_0')))),
      (refinenet.MeanPoolConv, lambda p, x: np_conv(np_mean_pool(x), *conv_params(p, 'Conv_0')))]:
    module = cls(output_dim=3)
    params, np_params = random_block_params(module, X8)
    out = module.apply({'params': params}, X8)
    assert out.shape == (2, 4, 4, 3)
    np.testing.assert_allclose(out, expected(np_params, X8.astype(np.float64)), atol=1e-5)


def test_rcu_block():
  module = refinenet.RCUBlock(features=2, n_blocks=2, n_stages=2, act=nn.elu)
  params, p = random_block_params(module, X8)
  assert list(params) == ['Conv_0', 'Conv_1', 'Conv_2', 'Conv_3']
  assert 'bias' not in params['Conv_0']
  h = X8.astype(np.float64)
  for block in range(2):
    residual = h
    for stage in range(2):
      h = np_conv(np_elu(h), p[f'Conv_{2 * block + stage}']['kernel'])
    h = h + residual
  np.testing.assert_allclose(module.apply({'params': params}, X8), h, atol=1e-5)


@pytest.mark.parametrize('conditional', [False, True])
def test_crp_blocks(conditional):
  if conditional:
    module = refinenet.CondCRPBlock(features=2, n_stages=2, normalizer=AddLabel, act=nn.elu)
    args = (X8, Y)
  else:
    module = refinenet.CRPBlock(features=2, n_stages=2, act=nn.elu)
    args = (X8,)
  params, p = random_block_params(module, *args)
  x = np_elu(X8.astype(np.float64))
  path = x
  for stage in range(2):
    if conditional:  # normalise, then average-pool (NCSN v1)
      path = np_pool5x5(path + np.asarray(Y)[:, None, None, None], 'avg')
    else:
      path = np_pool5x5(path, 'max')
    path = np_conv(path, p[f'Conv_{stage}']['kernel'])
    x = x + path
  np.testing.assert_allclose(module.apply({'params': params}, *args), x, atol=1e-5)


@pytest.mark.parametrize('interpolation', ['bilinear', 'nearest_neighbor'])
def test_msf_block_fuses_resized_convs(interpolation):
  module = refinenet.MSFBlock(shape=(8, 8), features=3, interpolation=interpolation)
  params, p = random_block_params(module, [X8, X4])
  coarse = np_conv(X4.astype(np.float64), *conv_params(p, 'Conv_1'))
  if interpolation == 'bilinear':
    coarse = np_upsample_bilinear(coarse, 8, 8)
  else:
    coarse = coarse.repeat(2, axis=1).repeat(2, axis=2)
  expected = np_conv(X8.astype(np.float64), *conv_params(p, 'Conv_0')) + coarse
  np.testing.assert_allclose(module.apply({'params': params}, [X8, X4]), expected, atol=1e-5)


def test_cond_msf_block_normalises_each_input():
  module = refinenet.CondMSFBlock(shape=(8, 8), features=3, normalizer=AddLabel,
                                  interpolation='nearest_neighbor')
  params, p = random_block_params(module, [X8, X4], Y)
  shift = np.asarray(Y)[:, None, None, None]
  coarse = np_conv(X4.astype(np.float64) + shift, *conv_params(p, 'Conv_1'))
  expected = (np_conv(X8.astype(np.float64) + shift, *conv_params(p, 'Conv_0')) +
              coarse.repeat(2, axis=1).repeat(2, axis=2))
  np.testing.assert_allclose(module.apply({'params': params}, [X8, X4], Y), expected, atol=1e-5)


def test_residual_block_downsampling_branch():
  module = refinenet.ResidualBlock(output_dim=4, normalization=Double, resample='down')
  params, p = random_block_params(module, X8)
  assert list(params) == ['Conv_0', 'ConvMeanPool_0', 'ConvMeanPool_1']
  x = X8.astype(np.float64)
  h = np_elu(2 * np_conv(np_elu(2 * x), *conv_params(p, 'Conv_0')))
  h = np_mean_pool(np_conv(h, *conv_params(p['ConvMeanPool_0'], 'Conv_0')))
  shortcut = np_mean_pool(np_conv(x, *conv_params(p['ConvMeanPool_1'], 'Conv_0')))
  np.testing.assert_allclose(module.apply({'params': params}, X8), h + shortcut, atol=1e-5)


def test_conditional_residual_block_dilated_branch():
  module = refinenet.ConditionalResidualBlock(output_dim=2, normalization=AddLabel, dilation=2)
  params, p = random_block_params(module, X8, Y)
  assert list(params) == ['Conv_0', 'Conv_1']  # identity shortcut
  x, shift = X8.astype(np.float64), np.asarray(Y)[:, None, None, None]
  h = np_elu(np_conv(np_elu(x + shift), *conv_params(p, 'Conv_0'), dilation=2) + shift)
  h = np_conv(h, *conv_params(p, 'Conv_1'), dilation=2)
  np.testing.assert_allclose(module.apply({'params': params}, X8, Y), x + h, atol=1e-5)


@pytest.mark.parametrize('resample, dilation, output_dim, convs, out_hw', [
    ('down', 1, 4, {'Conv_0': (3, 3, 2, 2)}, 4),
    ('down', 2, 4, {'Conv_0': (3, 3, 2, 2), 'Conv_1': (3, 3, 2, 4), 'Conv_2': (3, 3, 2, 4)}, 8),
    (None, 1, 4, {'Conv_0': (1, 1, 2, 4), 'Conv_1': (3, 3, 2, 4), 'Conv_2': (3, 3, 4, 4)}, 8),
    (None, 4, 4, {'Conv_0': (3, 3, 2, 4), 'Conv_1': (3, 3, 2, 4), 'Conv_2': (3, 3, 4, 4)}, 8),
])
def test_residual_block_branches(resample, dilation, output_dim, convs, out_hw):
  module = refinenet.ResidualBlock(output_dim, Double, resample, dilation=dilation)
  tree = dict(init_tree(module, X8))
  assert {path.split('/')[0]: tuple(shape) for path, shape in tree.items()
          if path.startswith('Conv_') and path.endswith('kernel')} == convs
  out = jax.eval_shape(lambda: module.apply(module.init(jax.random.PRNGKey(0), X8), X8))
  assert out.shape == (2, out_hw, out_hw, output_dim)


def test_refine_block_layout():
  start = refinenet.RefineBlock((4, 4), 4, start=True)
  assert list(dict.fromkeys(p.split('/')[0] for p, _ in init_tree(start, [X4]))) == [
      'RCUBlock_0', 'CRPBlock_0', 'RCUBlock_1']  # no fusion block at the start
  end = refinenet.CondRefineBlock((8, 8), 2, AddLabel, end=True)
  tree = init_tree(end, [X8, X4], Y)
  assert list(dict.fromkeys(p.split('/')[0] for p, _ in tree)) == [
      'CondRCUBlock_0', 'CondRCUBlock_1', 'CondMSFBlock_0', 'CondCRPBlock_0', 'CondRCUBlock_2']
  # The output RCU of the end block has 3 units of 2 convs.
  assert sum(p.startswith('CondRCUBlock_2/Conv_') for p, _ in tree) == 6
  out = jax.eval_shape(lambda: end.apply(end.init(jax.random.PRNGKey(0), [X8, X4], Y), [X8, X4], Y))
  assert out.shape == (2, 8, 8, 2)


# ----------------------------------------------------------------------------------------------
# Whole models.

OFFICIAL = np.load(DATA / 'ncsn_official_outputs.npz')
X, LABELS = jnp.asarray(OFFICIAL['x']), jnp.asarray(OFFICIAL['labels'])


def official_tree(name):
  return [(path, list(shape)) for path, shape in json.loads(str(OFFICIAL[f'{name}/tree']))]


@pytest.fixture(scope='module', params=list(CASES))
def tiny_run(request):
  """Our tiny model with the fixture parameters: its creation-ordered tree and its output."""
  name = request.param
  model = models.get_model(tiny_config(name, **CASES[name]))
  params = fixture_params(official_tree(name))
  return dict(name=name, tree=init_tree(model, X, LABELS),
              out=np.asarray(model.apply({'params': params}, X, LABELS)))


def test_tiny_tree_is_the_official_in_creation_order(tiny_run):
  assert tiny_run['tree'] == official_tree(tiny_run['name'])


def test_tiny_output_equals_the_official(tiny_run):
  official = OFFICIAL[f"{tiny_run['name']}/output"]
  assert tiny_run['out'].shape == X.shape
  np.testing.assert_allclose(tiny_run['out'], official, rtol=1e-5,
                             atol=1e-5 * np.abs(official).max())


def test_output_is_divided_by_the_labels_sigma(tiny_run):
  # sigma_i = sigma_max (sigma_min / sigma_max)^(i / (N - 1)), the official geometric sequence.
  sigmas = 50.0 * (0.01 / 50.0)**(np.asarray(LABELS) / 6)
  unscaled = OFFICIAL[f"{tiny_run['name']}/unscaled_output"]
  np.testing.assert_allclose(tiny_run['out'] * sigmas[:, None, None, None], unscaled, rtol=1e-4,
                             atol=1e-5 * np.abs(unscaled).max())


@pytest.mark.parametrize('name', ['ncsn', 'ncsnv2_64'])
def test_backward_is_finite_and_reaches_every_parameter(name):
  """One backward pass through every block type: the conditional ones (ncsn) and the plain ones
  (ncsnv2_64; ncsnv2_128/256 only stack the same blocks differently)."""
  model = models.get_model(tiny_config(name, **CASES[name]))
  grads = jax.grad(lambda p: jnp.sum(model.apply({'params': p}, X, LABELS)**2))(
      fixture_params(official_tree(name)))
  leaves = jax.tree_util.tree_leaves_with_path(grads)
  assert len(leaves) == len(official_tree(name))
  for path, grad in leaves:
    grad = np.asarray(grad)
    assert np.all(np.isfinite(grad)) and np.any(grad != 0), jax.tree_util.keystr(path)


def first_leaf(tree, path):
  for part in path.split('/'):
    tree = tree[part]
  return tree


def test_init_is_deterministic_and_has_the_official_distributions():
  model = models.get_model(tiny_config('ncsnv2_64'))
  first, again, other = (model.init(jax.random.PRNGKey(seed), X, LABELS)['params']
                         for seed in (0, 0, 1))
  assert list(walk(first)) == official_tree('ncsnv2_64')
  for a, b, c in zip(*(jax.tree_util.tree_leaves(t) for t in (first, again, other))):
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) or np.all(a == 0)

  # Pooled over layers after multiplying by sqrt(fan_in): ncsn convs (kernel and bias) are
  # PyTorch's U(-1, 1) / sqrt(fan_in); ConvMeanPool convs flax's LeCun normal (a normal truncated
  # at 2 std, rescaled to variance 1 / fan_in) with zero bias; InstanceNorm++ alpha and gamma are
  # N(1, 0.02^2) and beta is 0.
  pooled = {'uniform': [], 'lecun': [], 'near_one': []}
  for path, _ in walk(first):
    module, name = path.rsplit('/', 1)
    value = np.asarray(first_leaf(first, path))
    if name in ('kernel', 'bias'):
      fan_in = np.prod(first_leaf(first, module + '/kernel').shape[:-1])
      if 'ConvMeanPool' in module and name == 'bias':
        np.testing.assert_array_equal(value, 0)
      else:
        pooled['lecun' if 'ConvMeanPool' in module else 'uniform'].append(
            value.ravel() * np.sqrt(fan_in))
    elif name == 'beta':
      np.testing.assert_array_equal(value, 0)
    else:
      pooled['near_one'].append(value.ravel())
  uniform, lecun, near_one = (np.concatenate(pooled[k]) for k in ('uniform', 'lecun', 'near_one'))
  assert np.abs(uniform).max() <= 1 and abs(uniform.var() - 1 / 3) < 0.02 and uniform.size > 7000
  assert 1 < np.abs(lecun).max() <= 2 / 0.8796 and abs(lecun.var() - 1) < 0.4 and lecun.size == 80
  assert abs(near_one.mean() - 1) < 0.005 and abs(near_one.std() - 0.02) < 0.004


# ----------------------------------------------------------------------------------------------
# Config errors (test_configs.py checks the full-size official parameter trees).

@pytest.mark.parametrize('name, change, labels, message', [
    ('ncsn', {'num_classes': 5}, LABELS, 'model.num_classes = 5 must equal model.num_scales = 7'),
    ('ncsn', {'normalization': 'GroupNorm'}, LABELS, 'no noise-conditional variant'),
    ('ncsnv2_64', {'interpolation': 'bicubic'}, LABELS, "model.interpolation = 'bicubic'"),
    ('ncsnv2_64', {}, LABELS * 0.5, 'integer noise-level indices'),
    ('ncsnv2_128', {'nonlinearity': 'tanh'}, LABELS, "model.nonlinearity = 'tanh'"),
])
def test_bad_configs_and_labels_are_refused(name, change, labels, message):
  config = tiny_config(name)
  config.model.update(change)
  model = models.get_model(config)
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), X, labels))
