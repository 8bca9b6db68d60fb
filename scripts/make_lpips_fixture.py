"""Makes tests/data/lpips/, the reference for score_sde.lpips: small random stand-ins for LPIPS'
two weight files, image pairs, and the distances the `lpips` package computes with them. Runs in
a scratch venv (torch and lpips are never dependencies of the project):

    SCRATCH/ref/bin/pip install 'torch==2.13.0+cpu' lpips
    SCRATCH/ref/bin/python scripts/make_lpips_fixture.py

lpips builds its trunk with torchvision.models.vgg16(pretrained=...).features; no torchvision
build matching the CPU torch is on the package index, so this script stands in a torchvision
module of its own before importing lpips: the same `features` (cfg 'D': 3 x 3 convolutions with
padding 1, ReLU(inplace), 2 x 2 max pools of stride 2, at torchvision's indices), of given widths.
lpips' own code (ScalingLayer, slices, normalize_tensor, NetLinLayer, spatial_average) computes
every reference distance.

Checks before writing: on the full-width VGG16 (random trunk, the linear layers lpips ships), the
lpips package and `reference_lpips`, a plain-torch restatement of its computation, agree; they
agree again on the reduced network; and torch.load reads both written files back.

Written (about 125 KB):
  vgg16-397923af.pth  torchvision's VGG16 state-dict layout, every width divided by 32
                      (2, 4, 8, 16, 16): features.<i>.weight (out, in, 3, 3), features.<i>.bias,
                      and a tiny classifier.{0,3,6} that LPIPS does not use. Saved as the official
                      file is: legacy (pre-1.6) torch.save, tensors rebuilt by
                      torch._utils._rebuild_tensor.
  vgg.pth             lin<l>.model.1.weight (1, C_l, 1, 1), random >= 0, legacy torch.save with
                      _rebuild_tensor_v2, as lpips ships its v0.1 file.
  reference.npz       x_<name>, y_<name> (B, H, W, 3) float32 in [-1, 1], d_<name> (B,): pairs
                      '16' (16 x 16: noisy copy, unrelated, identical), '24' (24 x 24: blurred,
                      shifted) and '18x22' (pools that drop a row or column).
torch keys legacy storages by memory address, so a rerun changes the .pth files' bytes, not
their tensors.
"""
import collections
import os
import pickle
import sys
import types
import warnings

import numpy as np
import torch
from torch.nn import functional

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tests', 'data',
                   'lpips')
FULL_WIDTHS = (64, 128, 256, 512, 512)
SMALL_WIDTHS = tuple(w // 32 for w in FULL_WIDTHS)  # at / 16 the file alone is 240 KB
CONV_INDICES = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
SHIFT = torch.tensor([-.030, -.088, -.188])[None, :, None, None]
SCALE = torch.tensor([.458, .448, .450])[None, :, None, None]


def vgg16_features(widths) -> torch.nn.Sequential:
  """torchvision's vgg16().features (cfg 'D') with block widths `widths`."""
  layers, channels = [], 3
  for b, indices in enumerate(CONV_INDICES):
    for _ in indices:
      layers += [torch.nn.Conv2d(channels, widths[b], 3, padding=1), torch.nn.ReLU(inplace=True)]
      channels = widths[b]
    layers.append(torch.nn.MaxPool2d(2, 2))
  return torch.nn.Sequential(*layers)


_trunk_widths = [FULL_WIDTHS]


def _vgg16(pretrained=False, **unused):
  if pretrained:
    raise ValueError('no ImageNet weights here: use lpips.LPIPS(pnet_rand=True)')
  return types.SimpleNamespace(features=vgg16_features(_trunk_widths[0]))


torchvision = types.ModuleType('torchvision')
torchvision.models = types.SimpleNamespace(vgg16=_vgg16)
sys.modules['torchvision'] = torchvision
import lpips  # noqa: E402  (after the stand-in torchvision)


def random_vgg16(rng, widths) -> dict:
  """{'features.<i>.weight' / '.bias': float32 arrays}: He-normal kernels (activations stay
  O(1) through the 13 ReLU layers), small biases."""
  state, channels = collections.OrderedDict(), 3
  for b, indices in enumerate(CONV_INDICES):
    for index in indices:
      shape = (widths[b], channels, 3, 3)
      state[f'features.{index}.weight'] = (rng.standard_normal(shape) *
                                           np.sqrt(2.0 / (9 * channels))).astype(np.float32)
      state[f'features.{index}.bias'] = (0.05 * rng.standard_normal(widths[b])).astype(np.float32)
      channels = widths[b]
  return state


def random_lins(rng, widths) -> dict:
  return collections.OrderedDict(
      (f'lin{b}.model.1.weight', rng.uniform(0.0, 0.5, (1, w, 1, 1)).astype(np.float32))
      for b, w in enumerate(widths))


def tiny_classifier(rng, width) -> dict:
  """classifier.{0,3,6} of torchvision's VGG16 at a tiny size: in the file, unused by LPIPS."""
  shapes = {0: (2, width * 7 * 7), 3: (2, 2), 6: (10, 2)}
  state = collections.OrderedDict()
  for index, shape in shapes.items():
    state[f'classifier.{index}.weight'] = rng.standard_normal(shape).astype(np.float32)
    state[f'classifier.{index}.bias'] = rng.standard_normal(shape[0]).astype(np.float32)
  return state


def lpips_model(widths, vgg16: dict, lins=None):
  """lpips.LPIPS(net='vgg') on the trunk `vgg16` of block widths `widths`, with the linear layers
  `lins`, else those lpips ships (full widths only); in eval mode (no dropout)."""
  _trunk_widths[0] = widths
  model = lpips.LPIPS(net='vgg', pretrained=lins is None, pnet_rand=True, verbose=False)
  if lins is not None:
    layers = [lpips.NetLinLayer(width, use_dropout=True) for width in widths]
    for b, layer in enumerate(layers):
      setattr(model, f'lin{b}', layer)
    model.lins = torch.nn.ModuleList(layers)
  with torch.no_grad():
    for b, indices in enumerate(CONV_INDICES):
      block = getattr(model.net, f'slice{b + 1}')
      for index in indices:
        block._modules[str(index)].weight.copy_(torch.from_numpy(vgg16[f'features.{index}.weight']))
        block._modules[str(index)].bias.copy_(torch.from_numpy(vgg16[f'features.{index}.bias']))
      if lins is not None:
        model.lins[b].model[1].weight.copy_(torch.from_numpy(lins[f'lin{b}.model.1.weight']))
  return model.eval()


def reference_lpips(vgg16: dict, lins: dict, x, y):
  """lpips' computation restated in plain torch: x, y (B, 3, H, W) in [-1, 1] -> (B,)."""
  def taps(h):
    out = []
    for b, indices in enumerate(CONV_INDICES):
      if b:
        h = functional.max_pool2d(h, 2, 2)
      for index in indices:
        weight, bias = (torch.from_numpy(vgg16[f'features.{index}.{leaf}'])
                        for leaf in ('weight', 'bias'))
        h = functional.relu(functional.conv2d(h, weight, bias, padding=1))
      out.append(h)
    return out

  def unit(f):
    return f / (torch.sqrt(torch.sum(f**2, dim=1, keepdim=True)) + 1e-10)

  total = 0
  for b, (fx, fy) in enumerate(zip(taps((x - SHIFT) / SCALE), taps((y - SHIFT) / SCALE))):
    weight = torch.from_numpy(lins[f'lin{b}.model.1.weight'])
    total = total + functional.conv2d((unit(fx) - unit(fy))**2, weight).mean(dim=(2, 3))[:, 0]
  return total


def smooth_images(rng, count, height, width):
  """Sums of random sinusoids, (count, height, width, 3), scaled to [-1, 1]."""
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing='ij')
  images = np.zeros((count, height, width, 3))
  for _ in range(4):
    frequency = rng.uniform(0.1, 0.9, (count, 1, 1, 3, 2))
    phase = rng.uniform(0, 2 * np.pi, (count, 1, 1, 3))
    images += np.sin(frequency[..., 0] * rows[None, :, :, None] +
                     frequency[..., 1] * cols[None, :, :, None] + phase)
  return 2 * (images - images.min()) / (images.max() - images.min()) - 1


def image_pairs(rng) -> dict:
  """{name: (x, y)} NHWC float32 in [-1, 1]."""
  x16 = smooth_images(rng, 3, 16, 16)
  y16 = np.stack([np.clip(x16[0] + rng.normal(0, 0.2, x16[0].shape), -1, 1),
                  smooth_images(rng, 1, 16, 16)[0], x16[2]])
  x24 = smooth_images(rng, 2, 24, 24)
  y24 = np.stack([(x24[0] + np.roll(x24[0], 1, 0) + np.roll(x24[0], 1, 1)) / 3,
                  np.roll(x24[1], 3, 1)])
  x18 = smooth_images(rng, 1, 18, 22)
  y18 = np.clip(0.6 * x18 + rng.uniform(-0.1, 0.1, x18.shape), -1, 1)
  pairs = {'16': (x16, y16), '24': (x24, y24), '18x22': (x18, y18)}
  return {name: (x.astype(np.float32), y.astype(np.float32)) for name, (x, y) in pairs.items()}


def distances(function, x, y) -> np.ndarray:
  with torch.no_grad():
    nchw = [torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))) for a in (x, y)]
    return function(*nchw).reshape(-1).numpy().astype(np.float64)


def relative_error(a, b) -> float:
  return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30)))


class _RebuildTensorV1Pickler(pickle.Pickler):
  """Pickles tensors as torch < 0.4 did: torch._utils._rebuild_tensor(storage, offset, size,
  stride), as in torchvision's vgg16-397923af.pth."""

  def reducer_override(self, obj):
    if isinstance(obj, torch.Tensor):
      with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # TypedStorage is deprecated
        storage = obj.storage()
      return torch._utils._rebuild_tensor, (storage, obj.storage_offset(), tuple(obj.size()),
                                            obj.stride())
    return NotImplemented


_V1_PICKLE = types.ModuleType('pickle_rebuild_tensor_v1')
_V1_PICKLE.__dict__.update(Pickler=_RebuildTensorV1Pickler, dump=pickle.dump, load=pickle.load,
                           Unpickler=pickle.Unpickler)


def save_legacy(state: dict, path: str, rebuild_v1: bool):
  tensors = collections.OrderedDict((k, torch.from_numpy(v.copy())) for k, v in state.items())
  torch.save(tensors, path, _use_new_zipfile_serialization=False,
             **({'pickle_module': _V1_PICKLE} if rebuild_v1 else {}))
  loaded = torch.load(path, weights_only=False)
  assert list(loaded) == list(state), path
  assert all(np.array_equal(loaded[k].numpy(), v) for k, v in state.items()), path


def main():
  rng = np.random.default_rng(0)
  pairs = image_pairs(rng)

  full = random_vgg16(rng, FULL_WIDTHS)
  model = lpips_model(FULL_WIDTHS, full)
  shipped = {f'lin{b}.model.1.weight': model.lins[b].model[1].weight.detach().numpy()
             for b in range(5)}
  for name, (x, y) in pairs.items():
    ours = distances(lambda a, b: reference_lpips(full, shipped, a, b), x, y)
    error = relative_error(ours, distances(model, x, y))
    print(f'full width, pairs {name}: lpips {distances(model, x, y)}, relative difference of '
          f'the restatement {error:.1e}')
    assert error < 1e-5

  small, lins = random_vgg16(rng, SMALL_WIDTHS), random_lins(rng, SMALL_WIDTHS)
  model = lpips_model(SMALL_WIDTHS, small, lins)
  record = {}
  for name, (x, y) in pairs.items():
    reference = distances(model, x, y)
    error = relative_error(distances(lambda a, b: reference_lpips(small, lins, a, b), x, y),
                           reference)
    print(f'widths / 32, pairs {name}: lpips {reference}, restatement differs by {error:.1e}')
    assert error < 1e-5
    record[f'x_{name}'], record[f'y_{name}'], record[f'd_{name}'] = x, y, reference

  os.makedirs(OUT, exist_ok=True)
  vgg16 = collections.OrderedDict(small)
  vgg16.update(tiny_classifier(rng, SMALL_WIDTHS[-1]))
  save_legacy(vgg16, os.path.join(OUT, 'vgg16-397923af.pth'), rebuild_v1=True)
  save_legacy(lins, os.path.join(OUT, 'vgg.pth'), rebuild_v1=False)
  np.savez(os.path.join(OUT, 'reference.npz'), **record)
  for file in sorted(os.listdir(OUT)):
    print(file, os.path.getsize(os.path.join(OUT, file)), 'bytes')


if __name__ == '__main__':
  main()
