"""The FID Inception-v3 network against pytorch-fid, its weight loading and its pooling."""
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import inception

from . import torch_writer
from .inception_weights import random_state_dict, reference_images

REFERENCE = 'tests/data/inception_pytorch_fid.npz'


@pytest.fixture(scope='module')
def state_dict():
  return random_state_dict(0)


def test_features_equal_pytorch_fid(state_dict, tmp_path):
  # tests/data/inception_pytorch_fid.npz: pytorch-fid 0.3's InceptionV3 (torch 2.13 CPU, run
  # outside this repo) with these seeded random weights on reference_images(1).
  path = str(tmp_path / 'fid_inception.pth')
  torch_writer.save(state_dict, path)
  params = inception.load_inception(path)
  features = inception.get_inception_fn(params)(reference_images(1))
  reference = np.load(REFERENCE)
  for name, shape in (('pool_3', (2, 2048)), ('logits', (2, 1008))):
    assert features[name].shape == shape
    np.testing.assert_allclose(features[name], reference[name], rtol=0,
                               atol=2e-6 * np.abs(reference[name]).max())


def test_weight_file_layout_errors_and_transposes(state_dict):
  params = inception.params_from_state_dict(state_dict)
  kernel = state_dict['Mixed_6b.branch7x7_2.conv.weight']
  np.testing.assert_array_equal(params['Mixed_6b']['branch7x7_2']['kernel'],
                                kernel.transpose(2, 3, 1, 0))
  assert params['Mixed_6b']['branch7x7_2']['kernel'].shape == (1, 7, 128, 128)
  np.testing.assert_array_equal(params['fc']['kernel'], state_dict['fc.weight'].T)
  broken = dict(state_dict)
  del broken['Mixed_7c.branch_pool.bn.running_var']
  broken['fc.bias'] = np.zeros(1000, np.float32)
  with pytest.raises(ValueError, match=r'missing Mixed_7c.branch_pool.bn.running_var; fc.bias: '
                                       r'shape \(1000,\), expected \(1008,\)'):
    inception.params_from_state_dict(broken)


def test_average_pool_ignores_padding_and_max_pool_pads_with_minus_infinity():
  x = jnp.arange(1.0, 17.0).reshape(1, 4, 4, 1)
  average = np.asarray(inception._pool(x, 'avg'))[0, :, :, 0]
  assert average[0, 0] == np.mean([1, 2, 5, 6])  # a corner: the four pixels inside the image
  assert average[1, 1] == np.mean([1, 2, 3, 5, 6, 7, 9, 10, 11])
  maximum = np.asarray(inception._pool(-x, 'max'))[0, :, :, 0]
  assert maximum[0, 0] == -1.0


def test_resizing_matches_half_pixel_bilinear_interpolation():
  # torch's interpolate(bilinear, align_corners=False): output pixel i samples the input at
  # (i + 0.5) * in / out - 0.5, clamped to the image.
  image = np.random.default_rng(0).uniform(0, 1, (1, 7, 5, 1)).astype(np.float32)
  resized = np.asarray(inception.resize_to_input(jnp.asarray(image)))[0, :, :, 0]
  rows = np.clip((np.arange(299) + 0.5) * 7 / 299 - 0.5, 0, 6)
  cols = np.clip((np.arange(299) + 0.5) * 5 / 299 - 0.5, 0, 4)
  r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
  r1, c1 = np.minimum(r0 + 1, 6), np.minimum(c0 + 1, 4)
  wr, wc = (rows - r0)[:, None], (cols - c0)[None, :]
  grid = image[0, :, :, 0]
  expected = ((1 - wr) * ((1 - wc) * grid[np.ix_(r0, c0)] + wc * grid[np.ix_(r0, c1)]) +
              wr * ((1 - wc) * grid[np.ix_(r1, c0)] + wc * grid[np.ix_(r1, c1)]))
  np.testing.assert_allclose(resized, 2 * expected - 1, atol=1e-5)


def test_missing_weights_say_where_to_get_them(monkeypatch):
  from configs import default_cifar10_configs
  config = default_cifar10_configs.get_default_configs()
  config.eval.inception_weights = '/nonexistent/pt_inception.pth'
  monkeypatch.delenv(inception.ENV_WEIGHTS, raising=False)
  with pytest.raises(FileNotFoundError, match=r'Download https://github.com/mseitzer/pytorch-fid'):
    inception.inception_weights_path(config)
