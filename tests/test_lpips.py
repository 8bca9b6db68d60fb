"""LPIPS (VGG, v0.1) against the lpips package, and the reading of its two weight files."""
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import lpips, tensor_files

from . import torch_writer

# tests/data/lpips: random VGG16 and linear-layer weights at 1/32 of the real widths, in the
# official files' names and (legacy torch.save) format, and the lpips 0.1.4 package's distances
# with them (torch 2.13 CPU, run outside this repo by scripts/make_lpips_fixture.py).
FIXTURE = 'tests/data/lpips'
PAIRS = ('16', '24', '18x22')
WIDTHS = (2, 4, 8, 16, 16)


@pytest.fixture(scope='module')
def params():
  return lpips.load_lpips(FIXTURE)


@pytest.fixture(scope='module')
def lpips_fn(params):
  return lpips.get_lpips_fn(params)


@pytest.fixture(scope='module')
def reference():
  with np.load(os.path.join(FIXTURE, 'reference.npz')) as arrays:
    return dict(arrays)


def test_distances_equal_the_lpips_package(lpips_fn, reference):
  for name in PAIRS:
    x, y, expected = reference[f'x_{name}'], reference[f'y_{name}'], reference[f'd_{name}']
    distances = lpips_fn(x, y)
    assert distances.shape == expected.shape == (x.shape[0],)
    np.testing.assert_allclose(distances, expected, rtol=1e-5, atol=1e-9, err_msg=name)
  assert reference['d_16'][2] == 0.0 and np.array_equal(reference['x_16'][2], reference['y_16'][2])


def test_identical_images_are_at_distance_zero_and_the_distance_is_symmetric(lpips_fn, reference):
  x, y = reference['x_24'], reference['y_24']
  np.testing.assert_array_equal(lpips_fn(x, x), np.zeros(2))
  np.testing.assert_allclose(lpips_fn(y, x), lpips_fn(x, y), rtol=1e-6)


def test_grey_images_equal_their_rgb_repeat(lpips_fn, reference):
  x, y = reference['x_16'][..., :1], reference['y_16'][..., :1]
  np.testing.assert_allclose(lpips_fn(x, y), lpips_fn(jnp.repeat(x, 3, -1), jnp.repeat(y, 3, -1)),
                             rtol=1e-6)


def test_widths_come_from_the_files_and_kernels_are_hwio(params):
  names = [name for block in lpips._conv_names() for name in block]
  assert len(names) == 13 and names[-1] == 'conv5_3'
  assert params['conv1_1']['kernel'].shape == (3, 3, 3, WIDTHS[0])
  assert params['conv3_1']['kernel'].shape == (3, 3, WIDTHS[1], WIDTHS[2])
  assert params['conv5_3']['bias'].shape == (WIDTHS[4],)
  for level, width in enumerate(WIDTHS):
    assert params[f'lin{level}']['kernel'].shape == (1, 1, width, 1)
    assert np.all(params[f'lin{level}']['kernel'] >= 0)
  stored = tensor_files.read_legacy_torch_file(os.path.join(FIXTURE, lpips.VGG16_FILE),
                                         lambda name: name == 'features.12.weight')
  assert list(stored) == ['features.12.weight']  # the classifier's storages are skipped
  np.testing.assert_array_equal(params['conv3_2']['kernel'],
                                stored['features.12.weight'].transpose(2, 3, 1, 0))


def test_zip_files_read_alike(params, tmp_path):
  for file, keep in ((lpips.VGG16_FILE, lambda name: True), (lpips.LIN_FILE, lambda name: True)):
    state = tensor_files.read_legacy_torch_file(os.path.join(FIXTURE, file), keep)
    torch_writer.save(state, str(tmp_path / file))
  again = lpips.load_lpips(str(tmp_path))
  for name, leaves in params.items():
    for leaf, value in leaves.items():
      np.testing.assert_array_equal(again[name][leaf], value, err_msg=f'{name}/{leaf}')


def test_missing_weights_say_what_and_where(tmp_path, monkeypatch):
  monkeypatch.delenv(lpips.ENV_WEIGHTS, raising=False)
  missing = str(tmp_path / 'nowhere')
  with pytest.raises(FileNotFoundError) as error:
    lpips.load_lpips(missing)
  for part in (missing, 'vgg16-397923af.pth', lpips.VGG16_URL, 'lpips/weights/v0.1/vgg.pth',
               'github.com/richzhang/PerceptualSimilarity'):
    assert part in str(error.value)
  shutil.copy(os.path.join(FIXTURE, lpips.LIN_FILE), tmp_path)
  with pytest.raises(FileNotFoundError, match='Missing LPIPS weights: .*vgg16-397923af.pth'):
    lpips.load_lpips(str(tmp_path))
  with pytest.raises(FileNotFoundError, match=lpips.ENV_WEIGHTS):
    lpips.load_lpips()


def test_environment_variable_names_the_directory(params, monkeypatch):
  monkeypatch.setenv(lpips.ENV_WEIGHTS, FIXTURE)
  np.testing.assert_array_equal(lpips.load_lpips()['lin2']['kernel'], params['lin2']['kernel'])


def test_wrong_weights_are_listed(tmp_path):
  read = tensor_files.read_legacy_torch_file
  vgg16 = read(os.path.join(FIXTURE, lpips.VGG16_FILE), lambda n: True)
  lins = read(os.path.join(FIXTURE, lpips.LIN_FILE), lambda n: True)
  del vgg16['features.26.bias']
  lins['lin1.model.1.weight'] = np.zeros((1, 64, 1, 1), np.float32)
  with pytest.raises(ValueError, match=r'lin1.model.1.weight \(vgg.pth\): shape \(1, 64, 1, 1\), '
                                       r'expected \(1, 4, 1, 1\); '
                                       r'missing features.26.bias \(vgg16-397923af.pth\)'):
    lpips.params_from_state_dicts(vgg16, lins)
  not_torch = tmp_path / 'vgg.pth'
  not_torch.write_bytes(b'not a checkpoint')
  with pytest.raises(ValueError, match='neither a torch.save zip file nor a legacy'):
    lpips._read_state_dict(str(not_torch), lambda name: True)


def test_shapes_are_checked(params):
  lpips_fn = lpips.get_lpips_fn(params)
  with pytest.raises(ValueError, match='at least 16 x 16'):
    lpips_fn(jnp.zeros((1, 12, 16, 3)), jnp.zeros((1, 12, 16, 3)))
  with pytest.raises(ValueError, match='one shape'):
    lpips_fn(jnp.zeros((1, 16, 16, 3)), jnp.zeros((2, 16, 16, 3)))
