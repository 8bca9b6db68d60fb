"""Sample-quality statistics."""
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


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
  """Squared energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| (Szekely & Rizzo 2013) between
  the empirical distributions of samples x (n, ...) and y (m, ...) (V-statistic: zero only for
  identical samples, about (1/n + 1/m) E|X - X'| between two independent draws of one law)."""
  return 2.0 * _mean_distance(x, y) - _mean_distance(x, x) - _mean_distance(y, y)
