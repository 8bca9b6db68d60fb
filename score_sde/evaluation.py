"""Sample-quality statistics: energy distance (2-D data); FID, KID and Inception score from
Inception-v3 features (score_sde/inception.py); a dataset's reference statistics."""
import os

import numpy as np


def _mean_distance(a: np.ndarray, b: np.ndarray, block: int = 1024) -> float:
  """Mean Euclidean distance over all pairs (a_i, b_j), in float64, computed in blocks."""
  a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
  b_sq = np.sum(b**2, axis=1)
  total = 0.0
  for start in range(0, len(a), block):
    chunk = a[start:start + block]
    sq = np.sum(chunk**2, axis=1)[:, None] + b_sq[None, :] - 2.0 * chunk @ b.T
    total += np.sum(np.sqrt(np.maximum(sq, 0.0)))
  return total / (len(a) * len(b))


def energy_distance(x: np.ndarray, y: np.ndarray, unbiased: bool = False) -> float:
  """Squared energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| (Szekely & Rizzo 2013) between
  the empirical distributions of samples x (n, ...) and y (m, ...). Default: the V-statistic,
  zero only for identical samples, about (1/n + 1/m) E|X - X'| between two independent draws of
  one law. `unbiased`: the U-statistic (pairs i != j within a sample), whose expectation is the
  energy distance of the two laws itself (0 for one law; it can come out negative)."""
  n, m = len(x), len(y)
  within_x, within_y = _mean_distance(x, x), _mean_distance(y, y)
  if unbiased:
    within_x, within_y = within_x * n / (n - 1), within_y * m / (m - 1)
  return 2.0 * _mean_distance(x, y) - within_x - within_y


def feature_statistics(features: np.ndarray) -> tuple:
  """Mean (d,) and unbiased covariance (d, d), float64, of features (n, d)."""
  features = np.asarray(features, np.float64)
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  """Square root of a symmetric positive semi-definite matrix (negative rounding errors in its
  eigenvalues are clipped to 0)."""
  values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
  return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
  """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (FID: Heusel et al. 2017):
  |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)).

  tr((sigma1 sigma2)^(1/2)) = tr((A sigma2 A)^(1/2)) with A = sigma1^(1/2): a symmetric PSD
  matrix, so the square roots are eigen-decompositions, exact for singular covariances too."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  root1 = _psd_sqrt(sigma1)
  cross = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
  trace_sqrt = np.sum(np.sqrt(np.clip(cross, 0.0, None)))
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def kernel_inception_distance(features1: np.ndarray, features2: np.ndarray,
                              num_subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple:
  """KID (Binkowski et al. 2018): the unbiased estimate of MMD^2 with the kernel
  k(x, y) = (x.y / d + 1)^3, averaged over `num_subsets` random subsets of `subset_size` rows of
  each set (drawn without replacement; smaller sets are used whole). Returns (mean, std)."""
  f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
  dim, m = f1.shape[1], min(subset_size, len(f1), len(f2))
  rng = np.random.default_rng(seed)
  estimates = []
  for _ in range(num_subsets):
    x = f1[rng.choice(len(f1), m, replace=False)]
    y = f2[rng.choice(len(f2), m, replace=False)]
    kxx, kyy, kxy = [(a @ b.T / dim + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y))]
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    estimates.append(within - 2.0 * kxy.mean())
  return float(np.mean(estimates)), float(np.std(estimates))


def inception_score(logits: np.ndarray, num_splits: int = 10) -> tuple:
  """Inception score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))) with p(y|x) the softmax
  of the logits (n, classes) and p(y) its mean over each of `num_splits` equal splits. Returns
  the (mean, std) over splits."""
  logits = np.asarray(logits, np.float64)
  if not 1 <= num_splits <= len(logits):
    raise ValueError(f'num_splits = {num_splits} must lie in [1, {len(logits)}] (the number of '
                     'samples).')
  log_p = logits - logits.max(axis=1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
  scores = []
  for part in np.array_split(log_p, num_splits):
    log_marginal = np.log(np.exp(part).mean(axis=0))
    scores.append(np.exp(np.mean(np.sum(np.exp(part) * (part - log_marginal), axis=1))))
  return float(np.mean(scores)), float(np.std(scores))


def save_reference_statistics(path: str, pool_features: np.ndarray, **metadata) -> str:
  """Writes a dataset's reference statistics: 'mu', 'sigma' (float64) and the 'pool_3' features
  (float32, for KID), with metadata (dataset, split, image size, ...). Refuses to overwrite."""
  if os.path.exists(path):
    raise FileExistsError(f'{path} exists; choose another path (nothing was overwritten).')
  mu, sigma = feature_statistics(pool_features)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'xb') as f:
    np.savez(f, mu=mu, sigma=sigma, pool_3=np.asarray(pool_features, np.float32),
             **{k: np.asarray(v) for k, v in metadata.items()})
  return path


def load_reference_statistics(path: str) -> dict:
  """{'mu', 'sigma', 'pool_3', metadata...} of a file written by `save_reference_statistics`."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'Reference statistics {path} do not exist; compute them with '
                            '`python scripts/fid_stats.py --config <config> --out <path>`.')
  with np.load(path) as arrays:
    return {k: arrays[k] for k in arrays.files}
