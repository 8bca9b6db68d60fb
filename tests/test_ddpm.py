"""DDPM's layers against numpy re-computations, the tiny model against an output of the official
implementation (test_configs.py checks the full-size official parameter trees).

tests/data/ddpm_official_forward.json holds the official DDPM's output for the
tiny config below, with the parameters of `numpy_params(..., seed=PARAM_SEED)`, and the order in
which the official init creates the parameters.
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
from score_sde.models import layers

DATA = pathlib.Path(__file__).parent / 'data'
PARAM_SEED = 0
SIGMA_MIN, SIGMA_MAX, NUM_SCALES = 0.01, 50.0, 1000


def ddpm_config(sde='vpsde', continuous=False, centered=False, image_size=16, **model):
  """A DDPM config; by default the tiny one: 16x16x3, nf 32, ch_mult (1, 2), one res block,
  attention at 8x8 (nf is 32 because GroupNorm has 32 groups)."""
  config = ml_collections.ConfigDict()
  config.training = ml_collections.ConfigDict({'sde': sde, 'continuous': continuous})
  config.data = ml_collections.ConfigDict(
      {'centered': centered, 'image_size': image_size, 'num_channels': 3})
  fields = dict(name='ddpm', nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                dropout=0.1, resamp_with_conv=True, conditional=True, scale_by_sigma=False,
                nonlinearity='swish', normalization='GroupNorm', sigma_min=SIGMA_MIN,
                sigma_max=SIGMA_MAX, num_scales=NUM_SCALES)
  fields.update(model)
  config.model = ml_collections.ConfigDict(fields)
  return config


def numpy_params(shapes, seed):
  """Parameters like `shapes` (a pytree of arrays or ShapeDtypeStructs) drawn from numpy:
  N(0, 1 / fan_in) for kernels, N(0, 1) for vectors, leaves in jax flattening order."""
  leaves, treedef = jax.tree_util.tree_flatten(shapes)
  rng = np.random.RandomState(seed)
  drawn = [(rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(np.float32)
           for leaf in leaves]
  return jax.tree_util.tree_unflatten(treedef, drawn)


def tree_paths(tree, prefix=''):
  """[path, shape] of every leaf of a nested dict, in the dict's order."""
  out = []
  for key, value in tree.items():
    path = f'{prefix}/{key}' if prefix else key
    out += tree_paths(value, path) if hasattr(value, 'items') else [[path, list(value.shape)]]
  return out


# numpy references -------------------------------------------------------------------------------

def np_group_norm(x, scale, bias, groups=32, eps=1e-6):
  b, h, w, c = x.shape
  g = x.reshape(b, h, w, groups, c // groups)
  mean = g.mean(axis=(1, 2, 4), keepdims=True)
  var = g.var(axis=(1, 2, 4), keepdims=True)
  return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias


def np_conv3x3(x, kernel, bias, stride=1):
  """3x3 convolution; stride 1 pads one pixel on each side, stride 2 (even sizes) pads one row
  and column after the image and none before (what 'SAME' means for a stride-2 3x3 kernel)."""
  pad = (1, 1) if stride == 1 else (0, 1)
  xp = np.pad(x, [(0, 0), pad, pad, (0, 0)])
  h_out, w_out = x.shape[1] // stride, x.shape[2] // stride
  out = np.zeros((x.shape[0], h_out, w_out, kernel.shape[-1]))
  for i in range(3):
    for j in range(3):
      patch = xp[:, i:i + stride * h_out:stride, j:j + stride * w_out:stride]
      out += patch @ kernel[i, j]
  return out + bias


def np_swish(x):
  return x / (1 + np.exp(-x))


def np_attention(x, p):
  """Naive DDPM self-attention, position by position."""
  b, hh, ww, c = x.shape
  h = np_group_norm(x, p['GroupNorm_0']['scale'], p['GroupNorm_0']['bias'])
  q, k, v = (h @ p[f'NIN_{i}']['W'] + p[f'NIN_{i}']['b'] for i in range(3))
  out = np.zeros_like(x)
  for n in range(b):
    for i in range(hh):
      for j in range(ww):
        logits = np.array([[q[n, i, j] @ k[n, a, e] for e in range(ww)] for a in range(hh)])
        weights = np.exp(logits / np.sqrt(c) - (logits / np.sqrt(c)).max())
        weights /= weights.sum()
        out[n, i, j] = np.einsum('ae,aec->c', weights, v[n])
  return x + out @ p['NIN_3']['W'] + p['NIN_3']['b']


def np_resnet_block(x, temb, p):
  h = np_swish(np_group_norm(x, p['GroupNorm_0']['scale'], p['GroupNorm_0']['bias']))
  h = np_conv3x3(h, p['Conv_0']['kernel'], p['Conv_0']['bias'])
  if temb is not None:
    h = h + (np_swish(temb) @ p['Dense_0']['kernel'] + p['Dense_0']['bias'])[:, None, None, :]
  h = np_swish(np_group_norm(h, p['GroupNorm_1']['scale'], p['GroupNorm_1']['bias']))
  h = np_conv3x3(h, p['Conv_1']['kernel'], p['Conv_1']['bias'])
  if 'NIN_0' in p:
    x = x @ p['NIN_0']['W'] + p['NIN_0']['b']
  elif 'Conv_2' in p:
    x = np_conv3x3(x, p['Conv_2']['kernel'], p['Conv_2']['bias'])
  return x + h


def as_numpy(tree):
  return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


# layers -----------------------------------------------------------------------------------------

def test_attention_block_equals_naive_softmax_attention():
  x = np.random.RandomState(1).standard_normal((2, 4, 3, 64)).astype(np.float32)
  block = layers.AttnBlock(normalize=nn.GroupNorm)
  shapes = jax.eval_shape(block.init, jax.random.PRNGKey(0), x)
  assert [p for p, _ in tree_paths(shapes['params'])] == [
      'GroupNorm_0/bias', 'GroupNorm_0/scale'] + [f'NIN_{i}/{n}' for i in range(4) for n in 'Wb']
  params = numpy_params(shapes, seed=2)
  np.testing.assert_allclose(block.apply(params, x), np_attention(x, as_numpy(params['params'])),
                             rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('with_conv', [False, True])
def test_upsample_is_nearest_neighbour_then_conv(with_conv):
  x = np.random.RandomState(3).standard_normal((2, 3, 4, 5)).astype(np.float32)
  block = layers.Upsample(with_conv=with_conv)
  variables = numpy_params(jax.eval_shape(block.init, jax.random.PRNGKey(0), x), seed=4)
  expected = x.repeat(2, axis=1).repeat(2, axis=2)
  if with_conv:
    p = as_numpy(variables['params'])['Conv_0']
    assert p['kernel'].shape == (3, 3, 5, 5)
    expected = np_conv3x3(expected, p['kernel'], p['bias'])
  np.testing.assert_allclose(block.apply(variables, x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('with_conv', [False, True])
def test_downsample_is_2x2_mean_or_strided_conv_with_official_padding(with_conv):
  x = np.random.RandomState(5).standard_normal((2, 6, 4, 3)).astype(np.float32)
  block = layers.Downsample(with_conv=with_conv)
  variables = numpy_params(jax.eval_shape(block.init, jax.random.PRNGKey(0), x), seed=6)
  if with_conv:
    p = as_numpy(variables['params'])['Conv_0']
    expected = np_conv3x3(x, p['kernel'], p['bias'], stride=2)
  else:
    assert variables == {}
    expected = x.reshape(2, 3, 2, 2, 2, 3).mean(axis=(2, 4))
  np.testing.assert_allclose(block.apply(variables, x), expected, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='even'):
    block.init(jax.random.PRNGKey(0), x[:, :5])


@pytest.mark.parametrize('out_ch, conv_shortcut, with_temb, shortcut', [
    (None, False, True, None), (64, False, True, 'NIN_0'), (64, True, True, 'Conv_2'),
    (64, False, False, 'NIN_0')])
def test_resnet_block_equals_numpy(out_ch, conv_shortcut, with_temb, shortcut):
  rng = np.random.RandomState(7)
  x = rng.standard_normal((2, 4, 4, 32)).astype(np.float32)
  temb = rng.standard_normal((2, 16)).astype(np.float32) if with_temb else None
  block = layers.ResnetBlockDDPM(act=nn.swish, normalize=nn.GroupNorm, out_ch=out_ch,
                                 conv_shortcut=conv_shortcut, dropout=0.5)
  shapes = jax.eval_shape(block.init, jax.random.PRNGKey(0), x, temb)
  assert set(shapes['params']) == {'Conv_0', 'Conv_1', 'GroupNorm_0', 'GroupNorm_1'} | (
      {'Dense_0'} if with_temb else set()) | ({shortcut} if shortcut else set())
  variables = numpy_params(shapes, seed=8)
  out = block.apply(variables, x, temb)
  assert out.shape == (2, 4, 4, out_ch or 32)
  np.testing.assert_allclose(out, np_resnet_block(x, temb, as_numpy(variables['params'])),
                             rtol=1e-4, atol=1e-4)
  dropped = block.apply(variables, x, temb, train=True, rngs={'dropout': jax.random.PRNGKey(1)})
  assert not np.allclose(dropped, out)


# the tiny model ---------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def official():
  return json.loads((DATA / 'ddpm_official_forward.json').read_text())


@pytest.fixture(scope='module')
def tiny():
  """The tiny conditional model's numpy parameters and a jitted run(variables, x, labels) ->
  (output, gradient of mean(output^2) with respect to the variables)."""
  config = ddpm_config()
  model = models.get_model(config)
  shapes = jax.eval_shape(lambda: models.init_model(jax.random.PRNGKey(0), config, (16, 16, 3))[1])

  @jax.jit
  def run(variables, x, labels):
    out, pullback = jax.vjp(lambda v: model.apply(v, x, labels), variables)
    return out, pullback(2 * out / out.size)[0]

  return numpy_params(shapes, PARAM_SEED), run


def official_inputs(official):
  """The fixture's inputs: x (2, 16, 16, 3) uniform in [0, 1) from its seed, and labels (2,)."""
  x = np.random.RandomState(official['input_seed']).rand(2, 16, 16, 3).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(official['labels'], jnp.int32)


@pytest.fixture(scope='module')
def tiny_run(tiny, official):
  variables, run = tiny
  return run(variables, *official_inputs(official))


def assert_close_to_official(out, expected, scale=1.0):
  expected = np.asarray(expected) * scale
  assert out.shape == expected.shape
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_tiny_model_equals_official_output(tiny_run, official):
  assert_close_to_official(tiny_run[0], official['output'])


def test_tiny_model_backward_gives_finite_nonzero_gradients(tiny_run):
  norms = np.array([np.linalg.norm(g) for g in jax.tree_util.tree_leaves(tiny_run[1])])
  assert np.all(np.isfinite(norms)) and norms.min() > 0


def test_init_creates_official_parameter_order(official):
  """The order in which init creates the parameters (read while tracing: jax transforms return
  dicts sorted by key) is the official one."""
  order = []

  def init():
    variables = models.init_model(jax.random.PRNGKey(0), ddpm_config(), (16, 16, 3))[1]
    order.extend(path for path, _ in tree_paths(variables['params']))
    return variables

  jax.eval_shape(init)
  assert order == official['creation_order']


def test_init_is_deterministic_and_has_ddpm_scales():
  """Same seed, same parameters; another seed, others. DDPM init: kernels U with Var = scale /
  fan_avg, scale 1 for convs and dense layers, 0.1 for NIN, ~0 (1e-10) for the attention output
  NIN and the second conv of each ResNet block and the output conv; biases 0, GroupNorm scales 1.
  (A one-level unconditional model at 8x8 and 'rbg' keys: compiling flax's threefry key
  derivation for every module would cost ~7 s of CPU.)"""
  config = ddpm_config(ch_mult=(1,), conditional=False, image_size=8)
  init = jax.jit(lambda key: models.init_model(key, config, (8, 8, 3))[1]['params'])
  first, same, other = (init(jax.random.key(seed, impl='rbg')) for seed in (0, 0, 1))
  assert all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.array_equal, first, same)))
  assert not np.allclose(first['Conv_0']['kernel'], other['Conv_0']['kernel'])

  def std(*path):
    leaf = first
    for key in path:
      leaf = leaf[key]
    return np.std(leaf)

  fan_avg = 9 * 32  # 3x3 convolutions 32 -> 32
  assert std('ResnetBlockDDPM_0', 'Conv_0', 'kernel') == pytest.approx(fan_avg**-0.5, rel=0.05)
  assert std('AttnBlock_0', 'NIN_0', 'W') == pytest.approx((0.1 / 32)**0.5, rel=0.05)
  for path in [('AttnBlock_0', 'NIN_3', 'W'), ('ResnetBlockDDPM_0', 'Conv_1', 'kernel'),
               ('Conv_1', 'kernel')]:
    assert 0 < std(*path) < 1e-4, path
  assert std('ResnetBlockDDPM_0', 'Conv_0', 'bias') == 0
  np.testing.assert_array_equal(first['ResnetBlockDDPM_0']['GroupNorm_0']['scale'], 1)


def test_conditional_model_depends_on_labels_and_unconditional_does_not(tiny, official):
  variables, run = tiny
  x = jnp.broadcast_to(official_inputs(official)[0][:1], (2, 16, 16, 3))
  labels = jnp.array([3, 700])
  out = run(variables, x, labels)[0]
  assert np.abs(out[0] - out[1]).max() > 1e-3

  config = ddpm_config(conditional=False)
  shapes = jax.eval_shape(lambda: models.init_model(jax.random.PRNGKey(0), config, (16, 16, 3))[1])
  unconditional = numpy_params(shapes, PARAM_SEED)
  assert not any('Dense' in path for path, _ in tree_paths(unconditional))
  out = models.get_model(config).apply(unconditional, x, labels)
  np.testing.assert_array_equal(out[0], out[1])


def test_centered_model_takes_inputs_unchanged(tiny, official):
  """The official uncentered model sees 2 x - 1: the centered one on 2 x - 1 gives its output."""
  x, labels = official_inputs(official)
  centered = models.get_model(ddpm_config(centered=True))
  assert_close_to_official(centered.apply(tiny[0], 2 * x - 1, labels), official['output'])


def test_scale_by_sigma_divides_by_the_label_noise_level(tiny, official):
  """Discrete VE: sigma_i = sigma_max (sigma_min / sigma_max)^(i / (N - 1)); continuous VE: the
  label is sigma."""
  variables = tiny[0]
  x, labels = official_inputs(official)
  scaled = models.get_model(ddpm_config(sde='vesde', scale_by_sigma=True))
  sigmas = SIGMA_MAX * (SIGMA_MIN / SIGMA_MAX)**(np.asarray(labels) / (NUM_SCALES - 1))
  assert_close_to_official(scaled.apply(variables, x, labels), official['output'],
                           1 / sigmas[:, None, None, None])

  float_labels = jnp.array([0.5, 20.0])
  unscaled = models.get_model(ddpm_config(sde='vesde', continuous=True))
  scaled = models.get_model(ddpm_config(sde='vesde', continuous=True, scale_by_sigma=True))
  np.testing.assert_allclose(scaled.apply(variables, x, float_labels),
                             unscaled.apply(variables, x, float_labels) / np.array(
                                 [0.5, 20.0])[:, None, None, None], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('field, value, match', [
    ('ch_mult', (), 'model.ch_mult'),
    ('attn_resolutions', (0,), 'model.attn_resolutions'),
    ('conditional', 1, 'model.conditional'),
    ('nonlinearity', 'gelu', 'model.nonlinearity'),
    ('sde', 'vpsde', 'scale_by_sigma'),
])
def test_bad_config_values_are_named(field, value, match):
  settings = dict(sde='vesde', scale_by_sigma=True)
  settings[field] = value
  config = ddpm_config(**settings)
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(lambda: models.init_model(jax.random.PRNGKey(0), config, (16, 16, 3)))


def test_image_size_must_divide_by_the_downsampling_factor():
  config = ddpm_config(ch_mult=(1, 1, 1))
  with pytest.raises(ValueError, match='divisible by 4'):
    jax.eval_shape(lambda: models.init_model(jax.random.PRNGKey(0), config, (10, 10, 3)))
