"""FID, KID and Inception score against independent computations."""
import numpy as np
import pytest
import scipy.linalg

from score_sde import evaluation


def test_fid_equals_scipy_sqrtm_on_gaussian_features():
  rng = np.random.default_rng(0)
  a = rng.standard_normal((500, 16)) @ rng.standard_normal((16, 16))
  b = rng.standard_normal((400, 16)) @ rng.standard_normal((16, 16)) + 0.5
  mu1, s1 = evaluation.feature_statistics(a)
  mu2, s2 = evaluation.feature_statistics(b)
  np.testing.assert_allclose(s1, np.cov(a.T))  # unbiased
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
  np.testing.assert_allclose(evaluation.frechet_distance(mu1, s1, mu2, s2), expected, rtol=1e-8)


def test_fid_of_two_diagonal_gaussians_is_closed_form():
  v1, v2 = np.array([1.0, 4.0, 0.25, 0.0]), np.array([9.0, 1.0, 0.25, 2.0])  # one singular
  m1, m2 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.0])
  expected = np.sum((m1 - m2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))  # = 5 + 2 + 2
  got = evaluation.frechet_distance(m1, np.diag(v1), m2, np.diag(v2))
  np.testing.assert_allclose(got, expected, rtol=1e-12)
  rotation = np.linalg.qr(np.random.default_rng(1).standard_normal((4, 4)))[0]
  rotated = evaluation.frechet_distance(rotation @ m1, rotation @ np.diag(v1) @ rotation.T,
                                        rotation @ m2, rotation @ np.diag(v2) @ rotation.T)
  np.testing.assert_allclose(rotated, expected, rtol=1e-9)


def naive_kid(x, y):
  d, m = x.shape[1], len(x)
  k = lambda a, b: (a @ b / d + 1) ** 3
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
  return xx + yy - 2 * xy


def test_kid_is_the_unbiased_polynomial_mmd():
  rng = np.random.default_rng(2)
  x, y = rng.standard_normal((12, 5)), rng.standard_normal((12, 5)) + 0.3
  mean, std = evaluation.kernel_inception_distance(x, y, num_subsets=3, subset_size=50)
  np.testing.assert_allclose(mean, naive_kid(x, y), rtol=1e-10)  # whole sets every time
  assert std == pytest.approx(0.0, abs=1e-12)
  same = rng.standard_normal((400, 5))
  other = rng.standard_normal((400, 5))
  assert abs(evaluation.kernel_inception_distance(same, other, 10, 200)[0]) < 0.05


def test_inception_score_of_uniform_and_one_hot_predictions():
  uniform = np.zeros((100, 10))
  assert evaluation.inception_score(uniform, num_splits=5)[0] == pytest.approx(1.0)
  one_hot = np.where(np.arange(10)[None, :] == (np.arange(100) % 10)[:, None], 50.0, -50.0)
  mean, std = evaluation.inception_score(one_hot, num_splits=5)
  assert mean == pytest.approx(10.0, rel=1e-6) and std == pytest.approx(0.0, abs=1e-6)
  logits = np.random.default_rng(3).standard_normal((20, 4))
  p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  kl = np.sum(p * (np.log(p) - np.log(p.mean(0))), axis=1)
  assert evaluation.inception_score(logits, num_splits=1)[0] == pytest.approx(np.exp(kl.mean()))
  with pytest.raises(ValueError, match=r'num_splits = 21 must lie in \[1, 20\]'):
    evaluation.inception_score(logits, num_splits=21)


def test_reference_statistics_round_trip_and_never_overwrite(tmp_path):
  features = np.random.default_rng(4).standard_normal((30, 6))
  path = str(tmp_path / 'stats.npz')
  evaluation.save_reference_statistics(path, features, dataset='digits', split='train')
  loaded = evaluation.load_reference_statistics(path)
  np.testing.assert_allclose(loaded['mu'], features.mean(0))
  np.testing.assert_allclose(loaded['sigma'], np.cov(features.T))
  assert str(loaded['dataset']) == 'digits'
  with pytest.raises(FileExistsError, match='nothing was overwritten'):
    evaluation.save_reference_statistics(path, features)
  with pytest.raises(FileNotFoundError, match='scripts/fid_stats.py'):
    evaluation.load_reference_statistics(str(tmp_path / 'absent.npz'))
