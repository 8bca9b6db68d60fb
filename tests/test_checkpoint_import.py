"""Import of official checkpoints: files written here in the official JAX (flax msgpack) and
PyTorch (torch.save zip) formats from our own models, read back into our params trees, converted
into an orbax checkpoint, and resumed by the training driver."""
import collections
import importlib
import os
import pickle
import subprocess
import sys
import zipfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization, traverse_util

from configs.toy import vp as toy_vp
from score_sde import checkpoints, methods, models, train
from score_sde import official_checkpoints as oc
from score_sde import tensor_files

from . import torch_writer
from .helpers import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_like(tree, seed: int, positive: bool = False):
  """A tree of float32 normal(0, 1) draws (their absolute values if `positive`) shaped like
  `tree`."""
  rng = np.random.default_rng(seed)
  leaves, treedef = jax.tree.flatten(tree)
  draws = [rng.standard_normal(np.shape(x)).astype(np.float32) for x in leaves]
  return jax.tree.unflatten(treedef, [np.abs(d) if positive else d for d in draws])


def assert_trees_equal(actual, expected):
  assert (traverse_util.flatten_dict(actual).keys() ==
          traverse_util.flatten_dict(expected).keys())
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    assert np.asarray(a).dtype == np.float32
    np.testing.assert_array_equal(a, e)


def official_jax_state(params, params_ema, mu, nu, step: int, count: int) -> dict:
  """The state dict flax.serialization.to_bytes makes of the official training State (flax.optim
  Adam: param_states mirror the params with {grad_ema, grad_sq_ema} leaves)."""
  param_states = jax.tree.map(lambda m, v: {'grad_ema': m, 'grad_sq_ema': v}, mu, nu)
  return {'step': np.asarray(step, np.int32),
          'optimizer': {'target': params,
                        'state': {'step': np.asarray(count, np.int32),
                                  'param_states': param_states}},
          'lr': 2e-4, 'model_state': {}, 'ema_rate': 0.999, 'params_ema': params_ema,
          'rng': np.array([0, 42], np.uint32)}


def write_jax(path, state) -> str:
  with open(path, 'wb') as f:
    f.write(serialization.msgpack_serialize(state))
  return str(path)


def as_flax_0_3(params):
  """GroupNorm scales and biases shaped (1, 1, 1, C), as flax 0.3 (the official code's) stored
  them."""
  flat = traverse_util.flatten_dict(params, sep='/')
  return traverse_util.unflatten_dict(
      {k: (np.reshape(v, (1, 1, 1, -1)) if k.split('/')[-2].startswith('GroupNorm_') else v)
       for k, v in flat.items()}, sep='/')


def torch_state_dict(params, order) -> collections.OrderedDict:
  """Our params as score_sde_pytorch's DataParallel state_dict: the buffer `sigmas`, then
  `module.all_modules.<i>.<submodule path>.<name>` with (out, in, ...) weights, GroupNorm
  `weight`, the k-th top-level module at all_modules index k."""
  state = collections.OrderedDict([('module.sigmas', np.geomspace(50.0, 0.01, 10))])
  for index, top in enumerate(order):
    for path, value in traverse_util.flatten_dict(params[top]).items():
      *modules, leaf = path
      value = np.asarray(value)
      if value.ndim == 4:  # (kh, kw, I, O) -> (O, I, kh, kw)
        leaf, value = 'weight', value.transpose(3, 2, 0, 1)
      elif leaf == 'kernel':  # Dense (I, O) -> Linear (O, I)
        leaf, value = 'weight', value.T
      elif leaf == 'scale':
        leaf = 'weight'
      state['.'.join(['module', 'all_modules', str(index), *modules, leaf])] = value
  return state


def torch_checkpoint(raw, ema, mu, nu, order, step: int, count: int) -> dict:
  """What score_sde_pytorch's save_checkpoint writes: model and EMA (shadow_params: the
  trainable parameters in model.parameters() order; the Fourier W is not trainable) and the
  torch.optim.Adam state_dict (no state for W, which never gets a gradient)."""
  model = torch_state_dict(raw, order)
  keys = [k for k in model if k != 'module.sigmas']
  trainable = [i for i, k in enumerate(keys) if 'GaussianFourierProjection' not in
               order[int(k.split('.')[2])]]
  shadow = list(torch_state_dict(ema, order).values())[1:]
  exp_avg = list(torch_state_dict(mu, order).values())[1:]
  exp_avg_sq = list(torch_state_dict(nu, order).values())[1:]
  adam_state = {i: {'step': np.asarray(float(count), np.float32), 'exp_avg': exp_avg[i],
                    'exp_avg_sq': exp_avg_sq[i]} for i in trainable}
  groups = [{'lr': 2e-4, 'betas': (0.9, 0.999), 'eps': 1e-8, 'weight_decay': 0,
             'amsgrad': False, 'params': list(range(len(keys)))}]
  return {'optimizer': {'state': adam_state, 'param_groups': groups}, 'model': model,
          'ema': {'decay': 0.9999, 'num_updates': step,
                  'shadow_params': [shadow[i] for i in trainable]},
          'step': step}


@pytest.fixture(scope='module')
def mlp():
  """The tiny VP MLP: its config, params layout, and raw/EMA params and Adam moments."""
  config = tiny_config()
  shapes, order = oc.model_params_layout(config)
  raw = random_like(shapes, 1)
  return dict(config=config, shapes=shapes, order=order, raw=raw, ema=random_like(shapes, 2),
              mu=random_like(shapes, 3), nu=random_like(shapes, 4, positive=True))


@pytest.fixture(scope='module')
def mlp_jax_file(mlp, tmp_path_factory):
  state = official_jax_state(mlp['raw'], mlp['ema'], mlp['mu'], mlp['nu'], step=10, count=10)
  return write_jax(tmp_path_factory.mktemp('jax') / 'checkpoint_3', state)


def test_jax_checkpoint_round_trip_is_bit_exact(mlp, mlp_jax_file):
  assert oc.detect_format(mlp_jax_file) == 'jax'
  checkpoint = oc.read_checkpoint(mlp_jax_file, mlp['config'])
  assert checkpoint.step == 10 and checkpoint.adam.count == 10
  for got, want in ((checkpoint.params, 'raw'), (checkpoint.params_ema, 'ema'),
                    (checkpoint.adam.mu, 'mu'), (checkpoint.adam.nu, 'nu')):
    assert_trees_equal(got, mlp[want])
  for use, want in (('ema', 'ema'), ('raw', 'raw')):
    variables, step = oc.load_variables(mlp_jax_file, mlp['config'], use=use)
    assert step == 10
    assert_trees_equal(variables['params'], mlp[want])
  with pytest.raises(ValueError, match=r"use = 'best' is not supported; allowed: \['ema', 'raw'\]"):
    oc.load_variables(mlp_jax_file, mlp['config'], use='best')


def test_mismatching_tree_reports_every_bad_path(mlp, tmp_path):
  bad = traverse_util.flatten_dict(mlp['raw'], sep='/')
  del bad['Dense_2/bias']
  bad['Dense_3/kernel'] = np.zeros((3, 3), np.float32)
  bad['Dense_9/kernel'] = np.zeros((2, 2), np.float32)
  bad = traverse_util.unflatten_dict(bad, sep='/')
  path = write_jax(tmp_path / 'checkpoint_1',
                   official_jax_state(bad, mlp['ema'], mlp['mu'], mlp['nu'], 1, 1))
  with pytest.raises(ValueError) as error:
    oc.read_checkpoint(path, mlp['config'])
  message = str(error.value)
  assert message.startswith('optimizer.target does not fit the params of the config\'s model '
                            '(3 problems)')
  assert 'missing Dense_2/bias, shape (16,)' in message
  assert 'unexpected Dense_9/kernel, shape (2, 2)' in message
  assert 'wrong shape Dense_3/kernel: stored (3, 3), model (16, 16)' in message


def test_read_refuses_other_files_clearly(mlp, tmp_path):
  legacy = tmp_path / 'legacy.pt'
  legacy.write_bytes(b'\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.')  # pickled magic number
  with pytest.raises(ValueError, match='legacy .pre-1.6. PyTorch file'):
    oc.read_checkpoint(str(legacy), mlp['config'])
  junk = tmp_path / 'junk'
  junk.write_bytes(b'\xc1 not msgpack')
  with pytest.raises(ValueError, match='is not a flax msgpack checkpoint'):
    oc.read_checkpoint(str(junk), mlp['config'])
  not_state = write_jax(tmp_path / 'params_only', {'params': mlp['raw']})
  with pytest.raises(ValueError, match='not an official score_sde JAX checkpoint'):
    oc.read_checkpoint(not_state, mlp['config'])
  torch_file = tmp_path / 'model.pth'
  torch_writer.save({'model': {}}, str(torch_file))
  with pytest.raises(ValueError, match=r"for models \['ncsnpp', 'ddpm'\] only "
                                       r"\(config.model.name = 'mlp'\)"):
    oc.read_checkpoint(str(torch_file), mlp['config'])


class ConvNormDense(nn.Module):
  """Conv 3x3 -> GroupNorm -> spatial mean -> Dense, NHWC."""

  @nn.compact
  def __call__(self, x):
    h = nn.GroupNorm(num_groups=2, epsilon=1e-6)(nn.Conv(4, (3, 3))(x))
    return nn.Dense(3)(h.mean(axis=(1, 2)))


def conv_norm_dense_numpy(x, weights):
  """The same network in numpy on NCHW input with PyTorch-layout weights."""
  w, b = weights['all_modules.0.weight'], weights['all_modules.0.bias']
  padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
  height, width = x.shape[2:]
  h = np.zeros((x.shape[0], w.shape[0], height, width))
  for i in range(3):
    for j in range(3):
      h += np.einsum('oc,bchw->bohw', w[:, :, i, j], padded[:, :, i:i + height, j:j + width])
  h += b[None, :, None, None]
  groups = h.reshape(h.shape[0], 2, -1)
  h = ((groups - groups.mean(-1, keepdims=True)) /
       np.sqrt(groups.var(-1, keepdims=True) + 1e-6)).reshape(h.shape)
  h = h * weights['all_modules.1.weight'][None, :, None, None]
  h = h + weights['all_modules.1.bias'][None, :, None, None]
  return h.mean(axis=(2, 3)) @ weights['all_modules.2.weight'].T + weights['all_modules.2.bias']


def test_torch_layouts_compute_the_same_function(tmp_path):
  model = ConvNormDense()
  x = np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(np.float32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 5, 5, 3))))
  rng = np.random.default_rng(1)
  shapes_torch = {'0.weight': (4, 3, 3, 3), '0.bias': (4,), '1.weight': (4,), '1.bias': (4,),
                  '2.weight': (3, 4), '2.bias': (3,)}
  weights = {f'all_modules.{k}': rng.standard_normal(shape).astype(np.float32)
             for k, shape in shapes_torch.items()}
  torch_writer.save({'model': collections.OrderedDict(weights)}, str(tmp_path / 'm.pth'))
  checkpoint = oc.torch_state_to_checkpoint(tensor_files.read_torch_file(str(tmp_path / 'm.pth')),
                                            shapes['params'], ['Conv_0', 'GroupNorm_0', 'Dense_0'])
  assert checkpoint.params_ema is None and checkpoint.adam is None
  out = model.apply({'params': checkpoint.params}, jnp.asarray(x.transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(out, conv_norm_dense_numpy(x, weights), rtol=1e-4, atol=1e-4)


def test_group_norm_leaves_stored_4d_are_accepted():
  model = ConvNormDense()
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 5, 5, 3))))
  shapes = shapes['params']
  raw, ema, mu, nu = (random_like(shapes, seed) for seed in range(4))
  stored = official_jax_state(*(as_flax_0_3(t) for t in (raw, ema, mu, nu)), step=3, count=3)
  assert stored['params_ema']['GroupNorm_0']['scale'].shape == (1, 1, 1, 4)
  restored = serialization.msgpack_restore(serialization.msgpack_serialize(stored))
  checkpoint = oc.jax_state_to_checkpoint(restored, shapes)
  for got, want in ((checkpoint.params, raw), (checkpoint.params_ema, ema),
                    (checkpoint.adam.mu, mu), (checkpoint.adam.nu, nu)):
    assert_trees_equal(got, want)
  # Only GroupNorm leaves get that leniency.
  stored['params_ema']['Dense_0']['bias'] = np.zeros((1, 1, 1, 3), np.float32)
  with pytest.raises(ValueError, match=r'wrong shape Dense_0/bias: stored \(1, 1, 1, 3\), model'):
    oc.jax_state_to_checkpoint(stored, shapes)


@pytest.fixture(scope='module')
def fourier_mlp():
  """The tiny VE MLP, whose first module is the fixed GaussianFourierProjection."""
  config = tiny_config('vesde')
  shapes, order = oc.model_params_layout(config)
  assert order[0] == 'GaussianFourierProjection_0'
  raw = random_like(shapes, 5)
  ema = random_like(shapes, 6)
  ema['GaussianFourierProjection_0'] = raw['GaussianFourierProjection_0']  # never averaged
  mu, nu = random_like(shapes, 7), random_like(shapes, 8, positive=True)
  for moment in (mu, nu):  # never updated
    moment['GaussianFourierProjection_0'] = jax.tree.map(np.zeros_like,
                                                         raw['GaussianFourierProjection_0'])
  return dict(config=config, shapes=shapes, order=order, raw=raw, ema=ema, mu=mu, nu=nu)


def test_torch_checkpoint_round_trip(fourier_mlp, tmp_path):
  f = fourier_mlp
  path = str(tmp_path / 'checkpoint_8.pth')
  torch_writer.save(torch_checkpoint(f['raw'], f['ema'], f['mu'], f['nu'], f['order'], step=8,
                                     count=8), path, name='checkpoint_8')
  assert oc.detect_format(path) == 'torch'
  checkpoint = oc.torch_state_to_checkpoint(tensor_files.read_torch_file(path), f['shapes'],
                                            f['order'])
  assert checkpoint.step == 8 and checkpoint.adam.count == 8
  for got, want in ((checkpoint.params, 'raw'), (checkpoint.params_ema, 'ema'),
                    (checkpoint.adam.mu, 'mu'), (checkpoint.adam.nu, 'nu')):
    assert_trees_equal(got, f[want])


def test_torch_mismatches_are_reported_by_path(fourier_mlp, tmp_path):
  f = fourier_mlp
  saved = torch_checkpoint(f['raw'], f['ema'], f['mu'], f['nu'], f['order'], step=8, count=8)
  saved['model']['module.all_modules.2.weight'] = np.zeros((5, 5), np.float32)
  del saved['model']['module.all_modules.3.bias']
  with pytest.raises(ValueError) as error:
    oc.torch_state_to_checkpoint(saved, f['shapes'], f['order'])
  message = str(error.value)
  assert '(2 problems)' in message
  assert 'missing Dense_2/bias, shape (16,)' in message
  assert ('wrong shape Dense_1/kernel (from all_modules.2.weight): stored (5, 5), model (16, 32)'
          in message)
  saved = torch_checkpoint(f['raw'], f['ema'], f['mu'], f['nu'], f['order'], step=8, count=8)
  saved['ema']['shadow_params'].pop()
  with pytest.raises(ValueError, match='shadow_params holds 9 tensors but the state_dict has 10 '
                                       'trainable parameters'):
    oc.torch_state_to_checkpoint(saved, f['shapes'], f['order'])


def test_torch_reader_follows_strides_and_refuses_code(tmp_path):
  storage = np.arange(12, dtype=np.float32)
  path = str(tmp_path / 'views.pth')
  torch_writer.save({'t': torch_writer.TensorView(storage, 1, (3, 2), (1, 4)),
                     'all': torch_writer.TensorView(storage, 0, (12,), (1,)),
                     'step': np.asarray(3.0, np.float32), 'n': -(2 ** 40)}, path)
  read = tensor_files.read_torch_file(path)
  np.testing.assert_array_equal(read['t'], [[1, 5], [2, 6], [3, 7]])
  np.testing.assert_array_equal(read['all'], storage)
  assert read['step'].shape == () and read['n'] == -(2 ** 40)
  evil = str(tmp_path / 'evil.pth')
  with zipfile.ZipFile(evil, 'w') as archive:
    archive.writestr('evil/data.pkl', pickle.PROTO + b'\x02cos\nsystem\n' +
                     pickle.BINUNICODE + b'\x04\x00\x00\x00true' + pickle.TUPLE1 +
                     pickle.REDUCE + pickle.STOP)
  with pytest.raises(ValueError, match='Refusing to load global os.system'):
    tensor_files.read_torch_file(evil)


def adam_state(opt_state):
  return [s for s in jax.tree.leaves(opt_state, is_leaf=lambda n: isinstance(
      n, optax.ScaleByAdamState)) if isinstance(s, optax.ScaleByAdamState)][0]


def test_converted_checkpoint_is_resumed_by_the_driver(mlp, mlp_jax_file, tmp_path):
  config = tiny_config()
  workdir = str(tmp_path / 'run')
  assert oc.convert_to_workdir(config, mlp_jax_file, workdir) == 10
  # With n_iters = the imported step the driver restores it and trains no further.
  config.training.n_iters = 10
  state = train.train(config, workdir)
  assert int(state.step) == 10
  assert_trees_equal(state.params, mlp['raw'])
  assert_trees_equal(state.params_ema, mlp['ema'])
  adam = adam_state(state.opt_state)
  assert int(adam.count) == 10
  assert_trees_equal(adam.mu, mlp['mu'])
  assert_trees_equal(adam.nu, mlp['nu'])
  with pytest.raises(ValueError, match='already holds step.s. .10., at or after the imported'):
    oc.convert_to_workdir(config, mlp_jax_file, workdir)
  config.training.n_iters = 15
  assert int(train.train(config, workdir).step) == 15
  store = checkpoints.CheckpointStore(os.path.join(workdir, 'checkpoints'))
  assert store.steps() == [10, 15]
  store.close()


def test_convert_script_writes_a_raw_ema_checkpoint(tmp_path):
  config = toy_vp.get_config()
  shapes, _ = oc.model_params_layout(config)
  raw, ema = random_like(shapes, 11), random_like(shapes, 12)
  path = write_jax(tmp_path / 'checkpoint_2', official_jax_state(
      raw, ema, random_like(shapes, 13), random_like(shapes, 14, positive=True), 4, 4))
  workdir = str(tmp_path / 'run')
  subprocess.run([sys.executable, os.path.join(REPO, 'scripts', 'convert_checkpoint.py'),
                  '--config', os.path.join(REPO, 'configs', 'toy', 'vp.py'), '--checkpoint', path,
                  '--workdir', workdir, '--use', 'raw'], check=True, cwd=REPO, capture_output=True)
  experiment = methods.build_experiment(config)
  store = checkpoints.CheckpointStore(os.path.join(workdir, 'checkpoints'))
  state, data_state = store.restore(4, experiment.initial_state)
  store.close()
  assert data_state == {'train': {'next_batch': 0}, 'eval': {'next_batch': 0}}  # fresh iterators
  assert_trees_equal(state.params, raw)
  assert_trees_equal(state.params_ema, raw)  # --use raw: evaluation uses the raw parameters


OFFICIAL_CONFIGS = [('ncsnpp', 've.cifar10_ncsnpp_continuous'),
                    ('ncsnpp', 'vp.cifar10_ddpmpp_continuous'),
                    ('ddpm', 'vp.ddpm.cifar10')]


@pytest.mark.parametrize('model_name,config_name', OFFICIAL_CONFIGS)
def test_official_architectures_round_trip_in_both_formats(model_name, config_name, tmp_path):
  config = importlib.import_module(f'configs.{config_name}').get_config()
  config.model.update(nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                      dropout=0.0)
  config.data.update(image_size=16, num_channels=3)
  assert config.model.name == model_name and model_name in models.registered_models()
  shapes, order = oc.model_params_layout(config, (16, 16, 3))
  raw, ema = random_like(shapes, 21), random_like(shapes, 22)
  mu, nu = random_like(shapes, 23), random_like(shapes, 24, positive=True)
  fixed = [name for name in order if name.startswith('GaussianFourierProjection_')]
  for name in fixed:
    ema[name] = raw[name]
    mu[name] = nu[name] = {'W': np.zeros_like(raw[name]['W'])}
  jax_path = write_jax(tmp_path / 'checkpoint_5', official_jax_state(
      *(as_flax_0_3(t) for t in (raw, ema, mu, nu)), step=5, count=5))
  torch_path = str(tmp_path / 'checkpoint_5.pth')
  torch_writer.save(torch_checkpoint(raw, ema, mu, nu, order, step=5, count=5), torch_path)
  for path in (jax_path, torch_path):
    checkpoint = oc.read_checkpoint(path, config, data_shape=(16, 16, 3))
    assert checkpoint.step == 5 and checkpoint.adam.count == 5
    for got, want in ((checkpoint.params, raw), (checkpoint.params_ema, ema),
                      (checkpoint.adam.mu, mu), (checkpoint.adam.nu, nu)):
      assert_trees_equal(got, want)
