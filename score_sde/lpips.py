"""LPIPS, the learned perceptual image distance of Zhang et al. 2018 ("The Unreasonable
Effectiveness of Deep Features as a Perceptual Metric"), VGG variant, version 0.1, in JAX.

The distance between images x and y (B, H, W, C) in [-1, 1], C = 3 (C = 1 is repeated to RGB),
H, W >= 16, is a unitless (B,) array, >= 0 and 0 for identical images (eq. 1 of the paper, its
|w_l * (f - f')|^2 written as lpips computes it: weights w_lc on the squared differences):

  d(x, y) = sum_l mean_hw( sum_c w_lc (f_l(x)_hwc - f_l(y)_hwc)^2 )

where f_l are the activations of torchvision's VGG16 `features` after relu1_2, relu2_2, relu3_3,
relu4_3 and relu5_3 (3 x 3 convolutions with padding 1, ReLU, 2 x 2 max pools of stride 2 before
blocks 2-5), each unit-normalised over channels (f / (|f|_2 + 1e-10)), of the input scaled as
lpips' ScalingLayer does ((x - SHIFT) / SCALE, per channel); w_l >= 0 are the learned 1 x 1
"linear" layers (no bias). Convolutions run at float32 'highest' precision, so distances do not
depend on the accelerator's matmul precision.

Weights: two files in one directory (the argument of `load_lpips`, else $SCORE_SDE_LPIPS_WEIGHTS):
  vgg16-397923af.pth  torchvision's ImageNet VGG16 state dict (VGG16_URL; features.<i>.weight
                      (out, in, 3, 3) and .bias, the classifier is not used);
  vgg.pth             lpips' v0.1 linear layers lin<l>.model.1.weight (1, C_l, 1, 1), the file
                      lpips/weights/v0.1/vgg.pth of LPIPS_REPO (also inside the `lpips` package).
Both are read without torch (score_sde.tensor_files), in the zip format of torch >= 1.6 or in
the legacy format that both official files are in. Channel widths are taken from the files
(the real network's are 64, 128, 256, 512, 512).

Parameters are a dict {'conv1_1' ... 'conv5_3': {'kernel' (3, 3, in, out), 'bias' (out,)},
'lin0' ... 'lin4': {'kernel' (1, 1, C_l, 1)}}.
"""
import os
import zipfile
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from score_sde import tensor_files

ENV_WEIGHTS = 'SCORE_SDE_LPIPS_WEIGHTS'
VGG16_FILE = 'vgg16-397923af.pth'
LIN_FILE = 'vgg.pth'
VGG16_URL = 'https://download.pytorch.org/models/vgg16-397923af.pth'
LPIPS_REPO = 'https://github.com/richzhang/PerceptualSimilarity'

# lpips' ScalingLayer (v0.1): inputs in [-1, 1] shifted and scaled per RGB channel.
SHIFT = np.array([-.030, -.088, -.188], np.float32)
SCALE = np.array([.458, .448, .450], np.float32)
EPS = 1e-10  # lpips.normalize_tensor
MIN_SIZE = 16  # four 2 x 2 pools leave relu5_3 at least 1 x 1

# The indices in torchvision's VGG16 `features` of the convolutions of each of the 5 blocks;
# block b's k-th convolution is our 'conv{b}_{k}', and its last ReLU is LPIPS' tap of the block.
CONV_INDICES = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))


def _conv_names():
  return [[f'conv{b + 1}_{k + 1}' for k in range(len(block))]
          for b, block in enumerate(CONV_INDICES)]


def _conv_relu(p: dict, x):
  """3 x 3 convolution with padding 1, bias, ReLU. NHWC."""
  y = jax.lax.conv_general_dilated(x, p['kernel'], (1, 1), [(1, 1), (1, 1)],
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                   precision=jax.lax.Precision.HIGHEST)
  return jax.nn.relu(y + p['bias'])


def _max_pool(x):
  """2 x 2 max pool of stride 2; an odd last row or column is dropped (torch's floor mode)."""
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID')


def vgg16_taps(params: dict, x) -> list:
  """[relu1_2, relu2_2, relu3_3, relu4_3, relu5_3] of VGG16 for x (B, H, W, 3) as the network
  takes it (already scaled); block b's activation is (B, H / 2^b, W / 2^b, C_b), sizes floored."""
  taps = []
  for b, names in enumerate(_conv_names()):
    if b:
      x = _max_pool(x)
    for name in names:
      x = _conv_relu(params[name], x)
    taps.append(x)
  return taps


def _unit_normalize(f):
  """f / (|f|_2 + EPS), the norm over channels at each position."""
  return f / (jnp.sqrt(jnp.sum(f**2, axis=-1, keepdims=True)) + EPS)


def apply(params: dict, x, y):
  """LPIPS distances (B,) between images x and y (B, H, W, C) in [-1, 1], C = 1 or 3."""
  if x.shape != y.shape or x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(f'LPIPS takes two image batches of one shape (B, H, W, C), C = 1 or 3; '
                     f'got {x.shape} and {y.shape}.')
  if min(x.shape[1:3]) < MIN_SIZE:
    raise ValueError(f'LPIPS needs images of at least {MIN_SIZE} x {MIN_SIZE} pixels (VGG16 pools '
                     f'them 4 times); got {x.shape[1]} x {x.shape[2]}.')

  def taps(images):
    images = images.astype(jnp.float32)
    if images.shape[-1] == 1:
      images = jnp.repeat(images, 3, axis=-1)
    return vgg16_taps(params, (images - SHIFT) / SCALE)

  distance = jnp.zeros(x.shape[0], jnp.float32)
  for level, (tap_x, tap_y) in enumerate(zip(taps(x), taps(y))):
    difference = (_unit_normalize(tap_x) - _unit_normalize(tap_y))**2
    # Exactly 0 where the features are equal: under jit, XLA may round the two normalisations
    # differently, and identical images would be ~1e-16 apart.
    difference = jnp.where(jnp.all(tap_x == tap_y, axis=-1, keepdims=True), 0.0, difference)
    weights = params[f'lin{level}']['kernel'][0, 0, :, 0]
    distance += jnp.mean(jnp.einsum('bhwc,c->bhw', difference, weights,
                                    precision=jax.lax.Precision.HIGHEST), axis=(1, 2))
  return distance


def get_lpips_fn(params: dict) -> Callable:
  """Jitted lpips(x, y) -> (B,) distances of image batches (B, H, W, C) in [-1, 1] (see
  `apply`)."""
  return jax.jit(lambda x, y: apply(params, x, y))


def params_from_state_dicts(vgg16: dict, lins: dict) -> dict:
  """Parameters from torchvision's VGG16 state dict ({'features.0.weight': (out, in, 3, 3), ...})
  and lpips' linear layers ({'lin0.model.1.weight': (1, C_0, 1, 1), ...}): kernels OIHW -> HWIO,
  widths as stored. Raises ValueError listing every missing or mis-shaped entry."""
  params, problems = {}, []

  def take(state, key, shape, what):
    if key not in state:
      problems.append(f'missing {key} ({what})')
      return None
    value = np.asarray(state[key], np.float32)
    if value.shape != shape:
      problems.append(f'{key} ({what}): shape {value.shape}, expected {shape}')
      return None
    return value

  width = 3
  for b, (indices, names) in enumerate(zip(CONV_INDICES, _conv_names())):
    for index, name in zip(indices, names):
      key = f'features.{index}.weight'
      stored = vgg16.get(key)
      out = stored.shape[0] if getattr(stored, 'ndim', 0) == 4 else width
      kernel = take(vgg16, key, (out, width, 3, 3), VGG16_FILE)
      bias = take(vgg16, f'features.{index}.bias', (out,), VGG16_FILE)
      params[name] = {'kernel': None if kernel is None else kernel.transpose(2, 3, 1, 0),
                      'bias': bias}
      width = out
    kernel = take(lins, f'lin{b}.model.1.weight', (1, width, 1, 1), LIN_FILE)
    params[f'lin{b}'] = {'kernel': None if kernel is None else kernel.transpose(2, 3, 1, 0)}
  if problems:
    raise ValueError('Not the LPIPS VGG16 weights: ' + '; '.join(problems))
  return params


def weight_paths(directory: Optional[str] = None) -> tuple:
  """(VGG16 file, linear layers file) in `directory`, else in $SCORE_SDE_LPIPS_WEIGHTS;
  FileNotFoundError naming what is missing and where to get it."""
  directory = directory or os.environ.get(ENV_WEIGHTS)
  where = (f'LPIPS (VGG, v0.1) reads two files from one directory, given to load_lpips or in '
           f'${ENV_WEIGHTS}: {VGG16_FILE}, torchvision\'s ImageNet VGG16 (528 MB), from '
           f'{VGG16_URL}; and {LIN_FILE}, the LPIPS v0.1 linear layers (7 KB), the file '
           f'lpips/weights/v0.1/vgg.pth of {LPIPS_REPO} (also inside the lpips pip package).')
  if not directory:
    raise FileNotFoundError(f'No LPIPS weight directory given and ${ENV_WEIGHTS} is not set. '
                            + where)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'The LPIPS weight directory {directory} does not exist. ' + where)
  paths = (os.path.join(directory, VGG16_FILE), os.path.join(directory, LIN_FILE))
  missing = [path for path in paths if not os.path.isfile(path)]
  if missing:
    raise FileNotFoundError(f'Missing LPIPS weights: {", ".join(missing)}. ' + where)
  return paths


def load_lpips(directory: Optional[str] = None) -> dict:
  """LPIPS parameters from vgg16-397923af.pth and vgg.pth in `directory` (else in
  $SCORE_SDE_LPIPS_WEIGHTS), read without torch."""
  vgg16_path, lin_path = weight_paths(directory)
  vgg16 = _read_state_dict(vgg16_path, lambda name: name.startswith('features.'))
  lins = _read_state_dict(lin_path, lambda name: name.startswith('lin'))
  try:
    return params_from_state_dicts(vgg16, lins)
  except ValueError as error:
    raise ValueError(f'{error} (files {vgg16_path}, {lin_path}).') from None


def _read_state_dict(path: str, keep: Callable[[str], bool]) -> dict:
  """{name: array} of the tensors of a torch.save state dict (zip or legacy) whose names pass
  `keep`."""
  if zipfile.is_zipfile(path):
    state = tensor_files.read_torch_file(path)
    return {name: value for name, value in state.items() if keep(name)}
  return tensor_files.read_legacy_torch_file(path, keep)
