"""The Inception-v3 network of FID (Heusel et al. 2017), in JAX, with pytorch-fid's weights.

The FID network is the TensorFlow Inception-v3 graph of 2015-12-05 as ported to PyTorch by
pytorch-fid (file pt_inception-2015-12-05-6726825d.pth). It differs from torchvision's v3 in its
weights, in 1008 output classes, in average pools that ignore the zero padding in the Mixed_5*,
Mixed_6b-e and Mixed_7b blocks, and in a max pool in Mixed_7c's pool branch. Images are resized
to 299 x 299 (bilinear, half-pixel centres, no antialiasing, as torch's interpolate) and scaled
to [-1, 1]. Outputs: 'pool_3', the 2048 final average-pooled features (FID, KID), and 'logits',
the 1008 class logits (Inception score; softmax over all 1008, as the TF graph).

Parameters are a nested dict named as the PyTorch state dict (Mixed_5b/branch1x1/...); every
convolution is a "basic conv": convolution without bias, batch norm (eps 1e-3, running
statistics), ReLU, stored as {'kernel' (kh, kw, in, out), 'scale', 'bias', 'mean', 'var'}.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np

from score_sde import tensor_files

ENV_WEIGHTS = 'SCORE_SDE_INCEPTION_WEIGHTS'
WEIGHTS_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
               'pt_inception-2015-12-05-6726825d.pth')
BN_EPS = 1e-3
INPUT_SIZE = 299
NUM_CLASSES = 1008


def _block_a(cin, pool):
  return {'branch1x1': (1, 1, cin, 64), 'branch5x5_1': (1, 1, cin, 48),
          'branch5x5_2': (5, 5, 48, 64), 'branch3x3dbl_1': (1, 1, cin, 64),
          'branch3x3dbl_2': (3, 3, 64, 96), 'branch3x3dbl_3': (3, 3, 96, 96),
          'branch_pool': (1, 1, cin, pool)}


def _block_c(c7):
  return {'branch1x1': (1, 1, 768, 192), 'branch7x7_1': (1, 1, 768, c7),
          'branch7x7_2': (1, 7, c7, c7), 'branch7x7_3': (7, 1, c7, 192),
          'branch7x7dbl_1': (1, 1, 768, c7), 'branch7x7dbl_2': (7, 1, c7, c7),
          'branch7x7dbl_3': (1, 7, c7, c7), 'branch7x7dbl_4': (7, 1, c7, c7),
          'branch7x7dbl_5': (1, 7, c7, 192), 'branch_pool': (1, 1, 768, 192)}


def _block_e(cin):
  return {'branch1x1': (1, 1, cin, 320), 'branch3x3_1': (1, 1, cin, 384),
          'branch3x3_2a': (1, 3, 384, 384), 'branch3x3_2b': (3, 1, 384, 384),
          'branch3x3dbl_1': (1, 1, cin, 448), 'branch3x3dbl_2': (3, 3, 448, 384),
          'branch3x3dbl_3a': (1, 3, 384, 384), 'branch3x3dbl_3b': (3, 1, 384, 384),
          'branch_pool': (1, 1, cin, 192)}


# Kernel shapes (kh, kw, in, out) of every basic conv, by block, in network order.
CONV_SHAPES = {
    'Conv2d_1a_3x3': (3, 3, 3, 32), 'Conv2d_2a_3x3': (3, 3, 32, 32),
    'Conv2d_2b_3x3': (3, 3, 32, 64), 'Conv2d_3b_1x1': (1, 1, 64, 80),
    'Conv2d_4a_3x3': (3, 3, 80, 192),
    'Mixed_5b': _block_a(192, 32), 'Mixed_5c': _block_a(256, 64), 'Mixed_5d': _block_a(288, 64),
    'Mixed_6a': {'branch3x3': (3, 3, 288, 384), 'branch3x3dbl_1': (1, 1, 288, 64),
                 'branch3x3dbl_2': (3, 3, 64, 96), 'branch3x3dbl_3': (3, 3, 96, 96)},
    'Mixed_6b': _block_c(128), 'Mixed_6c': _block_c(160), 'Mixed_6d': _block_c(160),
    'Mixed_6e': _block_c(192),
    'Mixed_7a': {'branch3x3_1': (1, 1, 768, 192), 'branch3x3_2': (3, 3, 192, 320),
                 'branch7x7x3_1': (1, 1, 768, 192), 'branch7x7x3_2': (1, 7, 192, 192),
                 'branch7x7x3_3': (7, 1, 192, 192), 'branch7x7x3_4': (3, 3, 192, 192)},
    'Mixed_7b': _block_e(1280), 'Mixed_7c': _block_e(2048),
}


def _is_conv(entry) -> bool:
  return isinstance(entry, tuple)


def _basic_conv(p: dict, x, stride: int = 1, same: bool = True):
  """Convolution (no bias), batch norm with running statistics, ReLU. NHWC."""
  kh, kw = p['kernel'].shape[:2]
  padding = [(kh // 2, kh // 2), (kw // 2, kw // 2)] if same else [(0, 0), (0, 0)]
  y = jax.lax.conv_general_dilated(x, p['kernel'], (stride, stride), padding,
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return jax.nn.relu((y - p['mean']) * (p['scale'] * jax.lax.rsqrt(p['var'] + BN_EPS)) + p['bias'])


def _pool(x, kind: str, stride: int = 1, padding: int = 1):
  """3x3 pooling. 'avg' averages over the window's positions inside the image only
  (TensorFlow's, and pytorch-fid's count_include_pad=False); 'max' pads with -inf."""
  window, strides = (1, 3, 3, 1), (1, stride, stride, 1)
  pads = [(0, 0), (padding, padding), (padding, padding), (0, 0)]
  if kind == 'max':
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, pads)
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pads)
  count = jax.lax.reduce_window(jnp.ones(x.shape[1:3] + (1,), x.dtype)[None], 0.0, jax.lax.add,
                                window, strides, pads)
  return total / count


def _mixed_a(p, x):
  b5 = _basic_conv(p['branch5x5_2'], _basic_conv(p['branch5x5_1'], x))
  b3 = _basic_conv(p['branch3x3dbl_1'], x)
  b3 = _basic_conv(p['branch3x3dbl_3'], _basic_conv(p['branch3x3dbl_2'], b3))
  pool = _basic_conv(p['branch_pool'], _pool(x, 'avg'))
  return jnp.concatenate([_basic_conv(p['branch1x1'], x), b5, b3, pool], axis=-1)


def _mixed_b(p, x):
  b3 = _basic_conv(p['branch3x3'], x, stride=2, same=False)
  dbl = _basic_conv(p['branch3x3dbl_2'], _basic_conv(p['branch3x3dbl_1'], x))
  dbl = _basic_conv(p['branch3x3dbl_3'], dbl, stride=2, same=False)
  return jnp.concatenate([b3, dbl, _pool(x, 'max', stride=2, padding=0)], axis=-1)


def _chain(p, x, names):
  for name in names:
    x = _basic_conv(p[name], x)
  return x


def _mixed_c(p, x):
  b7 = _chain(p, x, ['branch7x7_1', 'branch7x7_2', 'branch7x7_3'])
  dbl = _chain(p, x, [f'branch7x7dbl_{i}' for i in range(1, 6)])
  pool = _basic_conv(p['branch_pool'], _pool(x, 'avg'))
  return jnp.concatenate([_basic_conv(p['branch1x1'], x), b7, dbl, pool], axis=-1)


def _mixed_d(p, x):
  b3 = _basic_conv(p['branch3x3_2'], _basic_conv(p['branch3x3_1'], x), stride=2, same=False)
  b7 = _chain(p, x, ['branch7x7x3_1', 'branch7x7x3_2', 'branch7x7x3_3'])
  b7 = _basic_conv(p['branch7x7x3_4'], b7, stride=2, same=False)
  return jnp.concatenate([b3, b7, _pool(x, 'max', stride=2, padding=0)], axis=-1)


def _mixed_e(p, x, pool_kind: str):
  b3 = _basic_conv(p['branch3x3_1'], x)
  b3 = jnp.concatenate([_basic_conv(p['branch3x3_2a'], b3), _basic_conv(p['branch3x3_2b'], b3)],
                       axis=-1)
  dbl = _chain(p, x, ['branch3x3dbl_1', 'branch3x3dbl_2'])
  dbl = jnp.concatenate([_basic_conv(p['branch3x3dbl_3a'], dbl),
                         _basic_conv(p['branch3x3dbl_3b'], dbl)], axis=-1)
  pool = _basic_conv(p['branch_pool'], _pool(x, pool_kind))
  return jnp.concatenate([_basic_conv(p['branch1x1'], x), b3, dbl, pool], axis=-1)


def resize_to_input(images):
  """(B, H, W, C) in [0, 1] -> (B, 299, 299, 3) in [-1, 1]: grey images repeated to RGB,
  bilinear resizing with half-pixel centres and no antialiasing."""
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  batch, height, width, _ = images.shape
  scale = jnp.array([INPUT_SIZE / height, INPUT_SIZE / width])
  resized = jax.image.scale_and_translate(images, (batch, INPUT_SIZE, INPUT_SIZE, 3), (1, 2), scale,
                                          jnp.zeros(2), method='linear', antialias=False)
  return 2.0 * resized - 1.0


def apply(params: dict, images) -> dict:
  """Inception features of images (B, H, W, C) in [0, 1], C = 1 or 3:
  {'pool_3': (B, 2048), 'logits': (B, 1008)}."""
  x = resize_to_input(images.astype(jnp.float32))
  x = _basic_conv(params['Conv2d_1a_3x3'], x, stride=2, same=False)
  x = _basic_conv(params['Conv2d_2a_3x3'], x, same=False)
  x = _pool(_basic_conv(params['Conv2d_2b_3x3'], x), 'max', stride=2, padding=0)
  x = _basic_conv(params['Conv2d_3b_1x1'], x)
  x = _pool(_basic_conv(params['Conv2d_4a_3x3'], x, same=False), 'max', stride=2, padding=0)
  for name in ('Mixed_5b', 'Mixed_5c', 'Mixed_5d'):
    x = _mixed_a(params[name], x)
  x = _mixed_b(params['Mixed_6a'], x)
  for name in ('Mixed_6b', 'Mixed_6c', 'Mixed_6d', 'Mixed_6e'):
    x = _mixed_c(params[name], x)
  x = _mixed_d(params['Mixed_7a'], x)
  x = _mixed_e(params['Mixed_7b'], x, 'avg')
  x = _mixed_e(params['Mixed_7c'], x, 'max')
  pool_3 = jnp.mean(x, axis=(1, 2))
  return {'pool_3': pool_3, 'logits': pool_3 @ params['fc']['kernel'] + params['fc']['bias']}


def get_inception_fn(params: dict):
  """Jitted fn(images (B, H, W, C) in [0, 1]) -> {'pool_3', 'logits'} (see `apply`)."""
  return jax.jit(lambda images: apply(params, images))


def params_from_state_dict(state_dict: dict) -> dict:
  """Parameters from pytorch-fid's state dict {'Mixed_5b.branch1x1.conv.weight': array, ...}:
  kernels OIHW -> HWIO, batch-norm weight/bias/running_mean/running_var -> scale/bias/mean/var.
  Raises ValueError listing missing or mis-shaped entries."""
  renamed = {'conv.weight': 'kernel', 'bn.weight': 'scale', 'bn.bias': 'bias',
             'bn.running_mean': 'mean', 'bn.running_var': 'var'}
  params, problems = {}, []

  def take(key, shape, transpose=None):
    if key not in state_dict:
      problems.append(f'missing {key}')
      return None
    value = np.asarray(state_dict[key], np.float32)
    value = value.transpose(transpose) if transpose else value
    if value.shape != tuple(shape):
      problems.append(f'{key}: shape {value.shape}, expected {tuple(shape)}')
    return value

  def conv(prefix, shape):
    return {ours: take(f'{prefix}.{theirs}', shape if ours == 'kernel' else shape[-1:],
                       (2, 3, 1, 0) if ours == 'kernel' else None)
            for theirs, ours in renamed.items()}

  for name, entry in CONV_SHAPES.items():
    params[name] = (conv(name, entry) if _is_conv(entry) else
                    {b: conv(f'{name}.{b}', s) for b, s in entry.items()})
  params['fc'] = {'kernel': take('fc.weight', (2048, NUM_CLASSES), (1, 0)),
                  'bias': take('fc.bias', (NUM_CLASSES,))}
  if problems:
    raise ValueError('Not the FID Inception weights: ' + '; '.join(problems[:10]))
  return params


def inception_weights_path(config) -> str:
  """The weight file named by config.eval.inception_weights, else by $SCORE_SDE_INCEPTION_WEIGHTS;
  FileNotFoundError (saying where to get it) if neither names an existing file."""
  path = config.eval.get('inception_weights') or os.environ.get(ENV_WEIGHTS)
  if not path or not os.path.exists(path):
    raise FileNotFoundError(
        f'The FID Inception weights are needed (eval.inception_weights = '
        f'{config.eval.get("inception_weights")!r}, ${ENV_WEIGHTS} = '
        f'{os.environ.get(ENV_WEIGHTS)!r}). Download {WEIGHTS_URL} (95 MB) and set '
        f'--config.eval.inception_weights=/path/to/it or ${ENV_WEIGHTS}.')
  return path


def load_inception(path: str) -> dict:
  """Parameters from pytorch-fid's .pth file (read without torch) or an .npz of our own layout
  ('Mixed_5b/branch1x1/kernel', ...)."""
  if path.endswith('.npz'):
    with np.load(path) as arrays:
      params = {}
      for key in arrays.files:
        *parents, leaf = key.split('/')
        node = params
        for parent in parents:
          node = node.setdefault(parent, {})
        node[leaf] = arrays[key]
      return params
  saved = tensor_files.read_torch_file(path)
  return params_from_state_dict(saved.get('state_dict', saved))
