"""NCSN++ / DDPM++ and their blocks: numpy re-computations of the blocks, the official parameter
trees and counts, official outputs on tiny configs, forward/backward for every option value."""
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from score_sde.models import layers, layerspp
from score_sde.models import get_model

FIXTURE = json.loads((pathlib.Path(__file__).parent / 'data' / 'ncsnpp_official.json').read_text())
RNG = np.random.default_rng(0)

TINY = dict(name='ncsnpp', nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
            dropout=0.1, resamp_with_conv=True, conditional=True, fir=True,
            fir_kernel=[1, 3, 3, 1], skip_rescale=True, resblock_type='biggan', progressive='none',
            progressive_input='residual', progressive_combine='sum', embedding_type='fourier',
            fourier_scale=16.0, init_scale=0.0, scale_by_sigma=True, nonlinearity='swish',
            normalization='GroupNorm', conv_size=3, num_scales=1000, sigma_min=0.01,
            sigma_max=50.0)


def make_config(centered=False, continuous=True, base=TINY, **model):
  config = ml_collections.ConfigDict()
  config.training = ml_collections.ConfigDict({'sde': 'vesde', 'continuous': continuous})
  config.data = ml_collections.ConfigDict({'centered': centered})
  config.model = ml_collections.ConfigDict({'name': 'ncsnpp', **base, **model})
  return config


def numpy_params(shapes, seed):
  """Parameters drawn with numpy (independent of jax's RNG), in a fixed tree order: weights with
  variance 1 / fan_in, GroupNorm scales 1 + 0.1 n, other vectors 0.2 n."""
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    if len(s.shape) >= 2:
      return (rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(np.float32)
    if jax.tree_util.keystr(path).endswith("['scale']"):
      return (1 + 0.1 * rng.standard_normal(s.shape)).astype(np.float32)
    return (0.2 * rng.standard_normal(s.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(leaf, shapes)


def run(fn, *args):
  """fn(*args), jit-compiled at XLA optimisation level 0: halves the compile time of these tiny
  networks, which dominates this file's run time."""
  options = {'xla_backend_optimization_level': 0}
  return jax.jit(fn).lower(*args).compile(compiler_options=options)(*args)


def param_shapes(model, *args, **kwargs):
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args, **kwargs))['params']


def flat_tree(tree, prefix=''):
  """[path, shape] of a nested dict of arrays in its key order (sorted for eval_shape trees)."""
  out = []
  for key, value in tree.items():
    path = f'{prefix}/{key}' if prefix else key
    out += flat_tree(value, path) if hasattr(value, 'items') else [[path, list(value.shape)]]
  return out


# ---- numpy re-computations of the blocks -----------------------------------------------------


def np_group_norm(x, scale, bias, eps=1e-6):
  b, h, w, c = x.shape
  groups = min(c // 4, 32)
  g = x.reshape(b, h, w, groups, c // groups)
  mean = g.mean(axis=(1, 2, 4), keepdims=True)
  var = g.var(axis=(1, 2, 4), keepdims=True)
  return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias


def np_conv_same(x, kernel, bias, stride=1):
  """'SAME' cross-correlation of x (B, H, W, I) with an odd kernel (k, k, I, O)."""
  k = kernel.shape[0]
  xp = np.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
  out = np.zeros((x.shape[0], x.shape[1] // stride, x.shape[2] // stride, kernel.shape[3]))
  for i in range(out.shape[1]):
    for j in range(out.shape[2]):
      patch = xp[:, i * stride:i * stride + k, j * stride:j * stride + k]
      out[:, i, j] = np.einsum('bhwi,hwio->bo', patch, kernel)
  return out + bias


def np_swish(x):
  return x / (1 + np.exp(-x))


def random_params(module, *args, seed=1):
  return numpy_params(param_shapes(module, *args), seed)


@pytest.mark.parametrize('skip_rescale', [False, True])
def test_attention_block_against_naive_softmax(skip_rescale):
  x = RNG.standard_normal((2, 3, 4, 8)).astype(np.float32)
  block = layerspp.AttnBlockpp(skip_rescale=skip_rescale)
  params = random_params(block, x)
  assert sorted(p for p, _ in flat_tree(params)) == [
      'GroupNorm_0/bias', 'GroupNorm_0/scale'] + [f'NIN_{i}/{n}' for i in range(4) for n in 'Wb']
  nin = [(np.asarray(params[f'NIN_{i}']['W']), np.asarray(params[f'NIN_{i}']['b']))
         for i in range(4)]
  h = np_group_norm(x, params['GroupNorm_0']['scale'], params['GroupNorm_0']['bias'])
  q, k, v = (h @ w + b for w, b in nin[:3])
  out = np.zeros_like(h)
  for n in range(2):
    for i in range(3):
      for j in range(4):
        logits = np.array([[q[n, i, j] @ k[n, a, c] / np.sqrt(8) for c in range(4)]
                           for a in range(3)])
        weights = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        out[n, i, j] = np.einsum('ac,acd->d', weights, v[n])
  out = out @ nin[3][0] + nin[3][1]
  expected = (x + out) / np.sqrt(2) if skip_rescale else x + out
  np.testing.assert_allclose(block.apply({'params': params}, x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('method', ['cat', 'sum'])
def test_combine(method):
  x = RNG.standard_normal((2, 4, 4, 3)).astype(np.float32)
  y = RNG.standard_normal((2, 4, 4, 6)).astype(np.float32)
  block = layerspp.Combine(method=method)
  params = random_params(block, x, y)
  assert params['Conv_0']['kernel'].shape == (1, 1, 3, 6)
  h = x @ params['Conv_0']['kernel'][0, 0] + params['Conv_0']['bias']
  expected = np.concatenate([h, y], axis=-1) if method == 'cat' else h + y
  np.testing.assert_allclose(block.apply({'params': params}, x, y), expected, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="'mul'"):
    param_shapes(layerspp.Combine(method='mul'), x, y)


def test_biggan_down_block_against_numpy():
  """Non-FIR BigGAN down block: 2x2 average pooling of act(GN(x)) and x, 3x3 convs, 1x1 skip."""
  x = RNG.standard_normal((2, 4, 4, 8)).astype(np.float32)
  block = layerspp.ResnetBlockBigGANpp(jax.nn.swish, down=True, out_ch=12, dropout=0.0)
  params = random_params(block, x)
  p = jax.tree.map(np.asarray, params)

  def pool(v):
    return v.reshape(2, 2, 2, 2, 2, -1).mean(axis=(2, 4))

  h = pool(np_swish(np_group_norm(x, p['GroupNorm_0']['scale'], p['GroupNorm_0']['bias'])))
  h = np_conv_same(h, p['Conv_0']['kernel'], p['Conv_0']['bias'])
  h = np_swish(np_group_norm(h, p['GroupNorm_1']['scale'], p['GroupNorm_1']['bias']))
  h = np_conv_same(h, p['Conv_1']['kernel'], p['Conv_1']['bias'])
  skip = pool(x) @ p['Conv_2']['kernel'][0, 0] + p['Conv_2']['bias']
  np.testing.assert_allclose(run(block.apply, {'params': params}, x), (skip + h) / np.sqrt(2),
                             rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('block,in_ch,out_shape,shortcut', [
    (layerspp.ResnetBlockDDPMpp(jax.nn.swish, out_ch=16), 8, (2, 8, 8, 16), 'NIN_0'),
    (layerspp.ResnetBlockDDPMpp(jax.nn.swish, out_ch=16, conv_shortcut=True), 8, (2, 8, 8, 16),
     'Conv_2'),
    (layerspp.ResnetBlockDDPMpp(jax.nn.swish), 8, (2, 8, 8, 8), None),
    (layerspp.ResnetBlockBigGANpp(jax.nn.swish), 8, (2, 8, 8, 8), None),
    (layerspp.ResnetBlockBigGANpp(jax.nn.swish, out_ch=16), 8, (2, 8, 8, 16), 'Conv_2'),
    (layerspp.ResnetBlockBigGANpp(jax.nn.swish, up=True, fir=True), 8, (2, 16, 16, 8), 'Conv_2'),
    (layerspp.ResnetBlockBigGANpp(jax.nn.swish, up=True), 8, (2, 16, 16, 8), 'Conv_2'),
    (layerspp.ResnetBlockBigGANpp(jax.nn.swish, down=True, fir=True, out_ch=16), 8,
     (2, 4, 4, 16), 'Conv_2'),
])
def test_resnet_block_shapes(block, in_ch, out_shape, shortcut):
  x = jnp.zeros((2, 8, 8, in_ch))
  temb = jnp.zeros((2, 32))
  out = jax.eval_shape(lambda: block.init_with_output(jax.random.PRNGKey(0), x, temb))
  assert out[0].shape == out_shape
  names = sorted(out[1]['params'])  # (eval_shape returns dicts in sorted key order)
  assert names == sorted(['GroupNorm_0', 'Conv_0', 'Dense_0', 'GroupNorm_1', 'Conv_1'] +
                         ([shortcut] if shortcut else []))
  assert out[1]['params']['Dense_0']['kernel'].shape == (32, out_shape[-1])


def test_resampling_blocks():
  x = RNG.standard_normal((2, 4, 4, 8)).astype(np.float32)

  def build(block):
    out, variables = jax.eval_shape(lambda: block.init_with_output(jax.random.PRNGKey(0), x))
    if not variables:  # no parameters: compute the output
      out = block.apply({}, x)
    return out, sorted(flat_tree(variables.get('params', {})))

  out, tree = build(layerspp.Upsample())
  np.testing.assert_array_equal(out, x.repeat(2, 1).repeat(2, 2))
  assert tree == []
  out, tree = build(layerspp.Downsample())
  np.testing.assert_allclose(out, x.reshape(2, 2, 2, 2, 2, 8).mean(axis=(2, 4)), atol=1e-6)
  assert build(layerspp.Upsample(out_ch=4, with_conv=True))[1] == [
      ['Conv_0/bias', [4]], ['Conv_0/kernel', [3, 3, 8, 4]]]
  out, tree = build(layerspp.Downsample(out_ch=4, with_conv=True, fir=True))
  assert out.shape == (2, 2, 2, 4)
  assert tree == [['Conv2d_0/bias', [4]], ['Conv2d_0/weight', [3, 3, 8, 4]]]
  out, tree = build(layerspp.Upsample(with_conv=True, fir=True))
  assert out.shape == (2, 8, 8, 8) and tree[1] == ['Conv2d_0/weight', [3, 3, 8, 8]]


# ---- official outputs (test_configs.py checks the full-size official parameter trees) -------

@pytest.mark.parametrize('case', list(FIXTURE['outputs']))
def test_matches_official_outputs(case):
  """Official NCSN++ outputs (tests/data/ncsnpp_official.json) for numpy-drawn parameters."""
  spec = FIXTURE['outputs'][case]
  config = make_config(spec['centered'], base=FIXTURE['base_model'], **spec['model'])
  x = np.random.default_rng(FIXTURE['x_seed']).uniform(size=(2, 8, 8, 3)).astype(np.float32)
  x = 2 * x - 1 if spec['centered'] else x
  labels = jnp.asarray(spec['labels'], jnp.float32)
  model = get_model(config)
  params = numpy_params(param_shapes(model, x, labels), FIXTURE['param_seed'])
  expected = np.asarray(spec['output'])
  out = run(model.apply, {'params': params}, x, labels)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


# ---- tiny models: every option value, forward and backward -----------------------------------

COMBOS = {  # with the official-output cases above, every value of every option
    'ncsnpp': dict(),
    'ddpm_blocks,residual,input_skip,cat,uncond,elu,centered': dict(
        resblock_type='ddpm', progressive='residual', progressive_input='input_skip',
        progressive_combine='cat', conditional=False, skip_rescale=False, nonlinearity='elu',
        init_scale=0.1, embedding_type='positional', scale_by_sigma=False, centered=True),
    'ddpm_blocks,no_fir,no_conv,output_skip,discrete_ve,relu': dict(
        resblock_type='ddpm', fir=False, resamp_with_conv=False, progressive='output_skip',
        progressive_input='none', embedding_type='positional', continuous=False,
        nonlinearity='relu', fir_kernel=[1, 1]),
}


def tiny(name):
  fields = dict(COMBOS[name])
  centered = fields.pop('centered', False)
  continuous = fields.pop('continuous', True)
  config = make_config(centered, continuous, **fields)
  labels = (jnp.array([0.1, 20.0]) if config.model.embedding_type == 'fourier'
            else jnp.array([3, 700]) if not continuous else jnp.array([3.5, 900.0]))
  return config, labels


@pytest.mark.parametrize('name', list(COMBOS))
def test_forward_and_backward(name):
  """One training-mode (dropout) forward and backward pass: output shape, finite values and
  gradients for every parameter. (The dropout key is an 'rbg' key: XLA:CPU compiles threefry
  random bits slowly.)"""
  config, labels = tiny(name)
  model = get_model(config)
  x = jnp.asarray(RNG.uniform(size=(2, 8, 8, 3)), jnp.float32)
  params = numpy_params(param_shapes(model, x, labels), 0)

  def loss(p):
    out = model.apply({'params': p}, x, labels, train=True,
                      rngs={'dropout': jax.random.key(1, impl='rbg')})
    return jnp.mean(out**2), out

  (loss, out), grads = run(jax.value_and_grad(loss, has_aux=True), params)
  assert out.shape == x.shape and np.isfinite(np.asarray(out)).all() and np.isfinite(loss)
  leaves = jax.tree.leaves(grads)
  assert len(leaves) == len(jax.tree.leaves(params))
  assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
  assert any(np.abs(np.asarray(g)).max() > 0 for g in leaves)


def test_scale_by_sigma_and_centered():
  """Same parameters: scale_by_sigma divides the output by sigma (the labels with the Fourier
  embedding, sigmas[labels] of the discrete VE ladder with the positional one); data.centered
  only skips the input map x -> 2x - 1."""
  x = np.random.default_rng(1).uniform(size=(2, 8, 8, 3)).astype(np.float32)
  base = dict(dropout=0.0, progressive='output_skip', progressive_input='input_skip',
              nonlinearity='lrelu')

  def output(labels, centered=False, continuous=True, **fields):
    config = make_config(centered, continuous, **base, **fields)
    model = get_model(config)
    params = numpy_params(param_shapes(model, x, labels), 0)
    return np.asarray(run(model.apply, {'params': params}, 2 * x - 1 if centered else x, labels))

  sigmas = jnp.array([0.1, 20.0])
  unscaled = output(sigmas, scale_by_sigma=False)
  np.testing.assert_allclose(output(sigmas, centered=True, scale_by_sigma=True),
                             unscaled / np.reshape(sigmas, (-1, 1, 1, 1)), rtol=1e-5, atol=1e-6)
  steps = jnp.array([3, 700])
  ladder = layers.get_sigmas(make_config())[[3, 700]].reshape(-1, 1, 1, 1)
  np.testing.assert_allclose(
      output(steps, continuous=False, embedding_type='positional', scale_by_sigma=True),
      output(steps, continuous=False, embedding_type='positional', scale_by_sigma=False) / ladder,
      rtol=1e-5)


def test_init_is_deterministic_and_official_initialisers():
  """Same seed, same parameters; another seed, other parameters. The key is an 'rbg' key because
  XLA:CPU compiles threefry-based init of even this tiny model in ~30 s (rbg: ~5 s)."""
  config, labels = tiny('ncsnpp')
  model = get_model(config)
  init = jax.jit(lambda key: model.init(key, jnp.zeros((1, 8, 8, 3)), labels[:1])['params'])
  init = init.lower(jax.random.key(0, impl='rbg')).compile(
      compiler_options={'xla_backend_optimization_level': 0})
  a, b, c = (init(jax.random.key(seed, impl='rbg')) for seed in (3, 3, 4))
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(u, v)
  assert not any(np.array_equal(u, w) for u, w in zip(jax.tree.leaves(a), jax.tree.leaves(c))
                 if u.ndim >= 2)
  # DDPM initialisers: zero biases, unit GroupNorm scales, output layers at init_scale 0 (1e-10),
  # other kernels uniform with variance 1 / fan_avg; Fourier features N(0, fourier_scale^2).
  for path, value in jax.tree_util.tree_leaves_with_path(a):
    path = jax.tree_util.keystr(path)
    if path.endswith("['bias']") or path.endswith("['b']"):
      np.testing.assert_array_equal(value, 0.0)
    elif path.endswith("['scale']"):
      np.testing.assert_array_equal(value, 1.0)
  first = a['ResnetBlockBigGANpp_0']
  assert np.abs(first['Conv_1']['kernel']).max() < 1e-4  # init_scale = 0
  assert np.abs(a['AttnBlockpp_0']['NIN_3']['W']).max() < 1e-4
  limit = np.sqrt(3 / 49.5)  # Conv_0: 3x3, 3 -> 8 channels, fan_avg = 9 (3 + 8) / 2
  assert 0.8 * limit < np.abs(a['Conv_0']['kernel']).max() <= limit
  assert 8 < np.std(a['GaussianFourierProjection_0']['W']) < 24


@pytest.mark.parametrize('fields,message', [
    (dict(progressive='skip'), 'model.progressive'),
    (dict(progressive_input='output_skip'), 'model.progressive_input'),
    (dict(progressive_combine='mul'), 'model.progressive_combine'),
    (dict(resblock_type='unet'), 'model.resblock_type'),
    (dict(embedding_type='learned'), 'model.embedding_type'),
    (dict(nonlinearity='tanh'), 'model.nonlinearity'),
    (dict(normalization='BatchNorm'), 'model.normalization'),
    (dict(normalization='InstanceNorm++'), 'model.normalization'),
    (dict(fir_kernel=[]), 'model.fir_kernel'),
    (dict(fir='yes'), 'model.fir'),
    (dict(ch_mult=()), 'model.ch_mult'),
    (dict(attn_resolutions=(0,)), 'model.attn_resolutions'),
    (dict(nf=0), 'model.nf'),
    (dict(nf=9), 'model.nf'),
    (dict(dropout=1.5), 'model.dropout'),
    (dict(init_scale=-1.0), 'model.init_scale'),
    (dict(conv_size=5), 'model.conv_size'),
    (dict(fourier_scale=0.0), 'model.fourier_scale'),
    (dict(continuous=False), 'training.continuous'),
    (dict(ch_mult=(1, 2, 2, 2)), 'multiple of 8'),
])
def test_config_errors(fields, message):
  fields = dict(fields)
  config = make_config(continuous=fields.pop('continuous', True), **fields)
  with pytest.raises(ValueError, match=message):
    param_shapes(get_model(config), jnp.zeros((1, 12, 12, 3)), jnp.ones((1,)))
