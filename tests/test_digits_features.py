"""The digits feature network: the committed weights' test accuracy, FD-digits of the test split
against itself (0), of train images against noise (far apart) at the data sizes of the digits
configs, block-mean reduction of larger images, and a short retraining run."""
import jax
import numpy as np
import pytest

from score_sde import digits_features


@pytest.fixture(scope='module', params=[8, 16])
def metric(request):
  return digits_features.DigitsMetric(image_size=request.param)


def test_committed_classifier_reads_the_test_digits(metric):
  accuracy = metric.accuracy(metric.test_images, metric.test_labels)
  assert accuracy >= 0.97, accuracy  # measured: 1.000 at 8x8, 0.983 at 16x16


def test_fd_digits_is_zero_for_the_test_split_and_far_larger_for_noise(metric):
  size = metric.test_images.shape[1]
  assert abs(metric.frechet_distance(metric.test_images)) < 1e-3
  real = metric.frechet_distance(digits_features.split_images('train', size)[0][:180])
  noise = metric.frechet_distance(np.random.default_rng(0).uniform(size=(180, size, size, 1)))
  assert 0 < real < noise / 4, (real, noise)  # measured: 150 vs 808 (8x8), 104 vs 825 (16x16)


def test_larger_images_are_reduced_by_block_means():
  images = np.random.default_rng(1).uniform(size=(3, 8, 8, 1)).astype(np.float32)
  upscaled = np.repeat(np.repeat(images, 3, axis=1), 3, axis=2)
  np.testing.assert_allclose(digits_features.to_classifier_input(upscaled), images, atol=1e-6)
  with pytest.raises(ValueError, match=r'\(B, H, W, 1\) in \[0, 1\]; got shape \(3, 8, 8, 3\)'):
    digits_features.to_classifier_input(np.zeros((3, 8, 8, 3)))


def test_missing_weights_say_how_to_make_them(tmp_path):
  with pytest.raises(FileNotFoundError, match='scripts/train_digits_classifier.py'):
    digits_features.load(str(tmp_path / 'absent.npz'))


def test_a_short_training_run_learns_and_round_trips_through_its_file(tmp_path):
  params = digits_features.train(seed=1, steps=150)
  path = digits_features.save(params, str(tmp_path / 'classifier.npz'))
  loaded = digits_features.load(path)
  assert jax.tree.structure(loaded) == jax.tree.structure(params)
  metric = digits_features.DigitsMetric(loaded)
  assert metric.accuracy(metric.test_images, metric.test_labels) > 0.8
