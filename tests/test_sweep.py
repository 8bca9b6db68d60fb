"""score_sde.sweep: grids, rows (NFE, time, quality), per-sample seeds shared across points and
batch sizes, guidance-scale axes, the quality figures against independent references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import evaluation, sweep
from score_sde.sampling import guidance
from tests import oracle

GMM = oracle.mixture(2)
SDE = oracle.SDES['vp']


def test_grid_is_the_cartesian_product():
  points = sweep.grid(method=['ddim', 'edm'], nfe=[5, 9], eps=1e-3)
  assert points == [{'method': m, 'nfe': n, 'eps': 1e-3} for m in ('ddim', 'edm') for n in (5, 9)]


def test_rows_and_shared_noise():
  points = sweep.grid(method='ddim', steps=[3, 6], eta=1.0) + [{'method': 'pc', 'steps': 20},
                                                              {'method': 'dpm_solver', 'nfe': 7}]
  collected = []
  quality = lambda samples: collected.append(samples) or {'n': len(samples)}  # noqa: E731
  rows = sweep.run(points, SDE, GMM.score_fn(SDE), (16, 2), key=jax.random.PRNGKey(0),
                   quality=quality, repeats=1)
  assert [r['nfe'] for r in rows] == [4, 7, 20, 7]
  assert all(r['seconds'] > 0 and r['n'] == 16 for r in rows)
  # Per-sample seeds: the first 8 samples of a batch of 8 are those of the batch of 16.
  half = sweep.run(points[:1], SDE, GMM.score_fn(SDE), (8, 2), key=jax.random.PRNGKey(0),
                   quality=lambda s: collected.append(s) or {}, repeats=1)
  assert half[0]['nfe'] == 4
  np.testing.assert_allclose(collected[-1], collected[0][:8], atol=1e-4)
  table = sweep.format_table(rows, columns=['method', 'steps', 'nfe'])
  assert table.splitlines()[0] == '| method | steps | nfe |'
  assert '| pc | 20 | 20 |' in table


def test_guidance_axis():
  class_score = GMM.class_score_fn(SDE)
  scales = []

  def score(scale):
    scales.append(scale)
    return guidance.guided_score_fn(class_score, 2, scale, null_label=3)

  rows = sweep.run(sweep.grid(method='dpm_solver', nfe=30, guidance_scale=[0.0, 1.0]), SDE, score,
                   (2000, 2), key=jax.random.PRNGKey(1),
                   quality=lambda s: {'in_class_2': float(np.mean(GMM.classify(s) == 2))},
                   repeats=1)
  assert scales == [0.0, 1.0]
  assert abs(rows[0]['in_class_2'] - 0.2) < 0.05  # unconditional: the component's weight
  assert rows[1]['in_class_2'] > 0.99


def test_sliced_wasserstein_of_a_translation():
  """W1 between a law and its translate by delta is |u . delta| along each direction u."""
  samples, _ = GMM.sample(jax.random.PRNGKey(2), 50_000)
  floor = GMM.sliced_wasserstein(samples, num_projections=16)
  delta = np.array([0.6, -0.3])
  shifted = GMM.sliced_wasserstein(np.asarray(samples) + delta, num_projections=16)
  directions = np.random.default_rng(0).normal(size=(16, 2))
  directions /= np.linalg.norm(directions, axis=1, keepdims=True)
  assert floor < 0.03
  assert abs(shifted - np.mean(np.abs(directions @ delta))) < 2 * floor + 0.01


def test_unbiased_energy_distance():
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (2000, 2)))
  y = np.asarray(jax.random.normal(jax.random.PRNGKey(4), (2000, 2)))
  biased = evaluation.energy_distance(x, y)
  unbiased = evaluation.energy_distance(x, y, unbiased=True)
  within = evaluation._mean_distance(x, x) / 1999 + evaluation._mean_distance(y, y) / 1999
  np.testing.assert_allclose(unbiased - biased, -within, rtol=1e-9)
  assert abs(unbiased) < 0.5 * biased  # the V-statistic keeps its floor (1/n + 1/m) E|X - X'|
  # A shifted law: the unbiased statistic estimates the energy distance of the laws.
  shift = evaluation.energy_distance(x + 1.0, y, unbiased=True)
  assert shift > 0.3


def test_image_quality_proxy_without_inception(monkeypatch, tmp_path):
  monkeypatch.setenv('SCORE_SDE_INCEPTION_WEIGHTS', str(tmp_path / 'absent.pth'))
  reference = np.asarray(jax.random.uniform(jax.random.PRNGKey(5), (64, 4, 4, 1)))
  quality = sweep.image_quality(reference)
  same = quality(np.asarray(jax.random.uniform(jax.random.PRNGKey(6), (64, 4, 4, 1))))
  darker = quality(0.5 * reference)
  assert set(same) == {'pixel_energy_distance'}
  assert abs(same['pixel_energy_distance']) < darker['pixel_energy_distance']


def test_build_sampler_errors():
  with pytest.raises(ValueError, match="method 'pc' takes steps"):
    sweep.build_sampler(SDE, 'pc', nfe=10)
  with pytest.raises(ValueError, match="Unknown sampling method 'heun'"):
    sweep.build_sampler(SDE, 'heun', steps=10)
  with pytest.raises(TypeError):
    sweep.build_sampler(SDE, 'ddim', steps=10, churn=1.0)
  assert jnp.isfinite(sweep.build_sampler(SDE, 'ode', rtol=1e-3)(
      jax.random.PRNGKey(0), GMM.score_fn(SDE), (2, 2))[0]).all()


def test_digits_quality_is_the_digits_metric_of_the_samples():
  from score_sde import digits_features, image_datasets
  images, labels = image_datasets.digits_split('test')
  by_class = [images[labels == c] for c in range(10)]
  samples = np.stack([by_class[k % 10][k // 10] for k in range(60)]) / 255.0
  report = sweep.digits_quality(num_classes=10)(samples)
  assert report['digit_accuracy'] >= 0.95
  np.testing.assert_allclose(report['fd_digits'],
                             digits_features.DigitsMetric().frechet_distance(samples), rtol=1e-9)
  assert 'digit_accuracy' not in sweep.digits_quality()(samples)
