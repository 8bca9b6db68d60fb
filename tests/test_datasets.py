"""Toy datasets: each distribution's defining property, determinism and resumable iteration."""
import numpy as np
import pytest

from score_sde import datasets, train

from .helpers import tiny_config

N = 20000


def test_checkerboard_lies_on_dark_squares_uniformly():
  x = datasets.sample_toy('checkerboard', N, 0)
  cells = np.floor(x + 2.0).astype(int)
  assert np.all((x >= -2) & (x <= 2))
  assert np.all((cells[:, 0] + cells[:, 1]) % 2 == 0)
  counts = np.bincount(cells[:, 0] * 4 + cells[:, 1], minlength=16)[[0, 2, 5, 7, 8, 10, 13, 15]]
  np.testing.assert_allclose(counts / N, 1 / 8, atol=5 * np.sqrt(1 / 8 * 7 / 8 / N))


def test_eight_gaussians_have_the_stated_centres_and_spread():
  x = datasets.sample_toy('eight_gaussians', N, 0)
  angle = np.round(np.arctan2(x[:, 1], x[:, 0]) / (np.pi / 4)) * (np.pi / 4)
  residual = x - 2.0 * np.stack([np.cos(angle), np.sin(angle)], 1)
  np.testing.assert_allclose(residual.std(0), 0.15, rtol=0.05)
  np.testing.assert_allclose(residual.mean(0), 0.0, atol=0.01)


def test_rings_have_the_stated_radii():
  radius = np.linalg.norm(datasets.sample_toy('rings', N, 0), axis=1)
  nearest = np.clip(np.round(radius / 0.5), 1, 4) * 0.5
  np.testing.assert_allclose((radius - nearest).std(), 0.04, rtol=0.05)
  np.testing.assert_allclose(np.bincount((nearest * 2).astype(int))[1:] / N, 0.25, atol=0.02)


def test_swiss_roll_lies_near_its_spiral():
  x = datasets.sample_toy('swiss_roll', 4000, 0)
  s = np.linspace(1.5 * np.pi, 4.5 * np.pi, 20000)
  curve = np.stack([s * np.cos(s), s * np.sin(s)], axis=1) / 6.0
  distance = np.sqrt(((x[:, None, :] - curve[None, :, :])**2).sum(-1)).min(1)
  # The distance to the curve is |normal component| of N(0, 0.05^2 I): mean 0.05 sqrt(2/pi).
  np.testing.assert_allclose(distance.mean(), 0.05 * np.sqrt(2 / np.pi), rtol=0.1)


def test_two_moons_halves_are_balanced_and_centred():
  x = datasets.sample_toy('two_moons', N, 0)
  np.testing.assert_allclose(x.mean(0), 0.0, atol=0.03)
  assert 0.45 < np.mean(x[:, 1] > 0.0) < 0.55


@pytest.mark.parametrize('name', sorted(datasets.TOY_DISTRIBUTIONS))
def test_toy_data_is_deterministic_in_the_seed(name):
  a, b, c = (datasets.sample_toy(name, 100, seed) for seed in (3, 3, 4))
  assert a.dtype == np.float32 and a.shape == (100, 2)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_iterator_resumes_from_its_state():
  config = tiny_config()
  stream = datasets.get_dataset(config, 'train', 8)
  first = [next(stream)['x'] for _ in range(3)]
  state = stream.get_state()
  rest = [next(stream)['x'] for _ in range(2)]
  resumed = datasets.get_dataset(config, 'train', 8)
  resumed.set_state(state)
  np.testing.assert_array_equal(np.stack(rest), np.stack([next(resumed)['x'] for _ in range(2)]))
  assert not np.allclose(first[0], first[1])
  test_batch = next(datasets.get_dataset(config, 'test', 8))['x']
  assert not np.allclose(test_batch, first[0])


@pytest.mark.parametrize('field,value,message', [
    ('data.dataset', 'cifar11', r"data.dataset = 'cifar11' is not supported; allowed: \["),
    ('training.batch_size', 0, 'training.batch_size = 0 must be a positive integer'),
])
def test_bad_dataset_config_is_refused(field, value, message):
  config = tiny_config()
  section, key = field.split('.')
  config[section][key] = value
  with pytest.raises(ValueError, match=message):
    train.data_iterators(config)
