"""Datasets behind one interface: `get_dataset(config, split)` returns an iterator of batches.

A batch is a dict {'x': float32 array (batch_size, *data_shape(config))}. Iterators have
`get_state()` / `set_state(state)` (JSON-serialisable dicts, as grain's iterators), so a resumed
training run continues with exactly the batches an uninterrupted run would have seen.

Toy 2-D distributions (`data.dataset` one of TOY_DISTRIBUTIONS) are drawn on the fly: batch k of a
split comes from a numpy generator seeded with (seed, split, k), so every batch is deterministic
and the stream never repeats. Their points lie roughly in [-2.5, 2.5]^2.
"""
from typing import Callable, Dict

import numpy as np

from score_sde import config_checks

SPLITS = ('train', 'test')


def _checkerboard(rng: np.random.Generator, n: int) -> np.ndarray:
  """Uniform on the 8 dark squares of a 4x4 board covering [-2, 2]^2."""
  x = rng.uniform(-2.0, 2.0, n)
  column = np.floor(x + 2.0)
  row = 2 * rng.integers(0, 2, n) + column % 2
  y = -2.0 + row + rng.uniform(0.0, 1.0, n)
  return np.stack([x, y], axis=1)


def _eight_gaussians(rng: np.random.Generator, n: int) -> np.ndarray:
  """Equal mixture of 8 isotropic Gaussians (std 0.15) centred on the circle of radius 2."""
  angle = rng.integers(0, 8, n) * (np.pi / 4)
  centres = 2.0 * np.stack([np.cos(angle), np.sin(angle)], axis=1)
  return centres + 0.15 * rng.standard_normal((n, 2))


def _swiss_roll(rng: np.random.Generator, n: int) -> np.ndarray:
  """A 2-D spiral r = s, angle s for s in [1.5 pi, 4.5 pi], scaled by 1/6, noise std 0.05."""
  s = 1.5 * np.pi * (1.0 + 2.0 * rng.uniform(0.0, 1.0, n))
  return np.stack([s * np.cos(s), s * np.sin(s)], axis=1) / 6.0 + 0.05 * rng.standard_normal((n, 2))


def _two_moons(rng: np.random.Generator, n: int) -> np.ndarray:
  """Two interleaved half circles of radius 1.5, centred on the origin, noise std 0.1."""
  angle = rng.uniform(0.0, np.pi, n)
  upper = rng.integers(0, 2, n).astype(bool)
  x = np.where(upper, np.cos(angle), 1.0 - np.cos(angle)) - 0.5
  y = np.where(upper, np.sin(angle), 0.5 - np.sin(angle)) - 0.25
  return 1.5 * np.stack([x, y], axis=1) + 0.1 * rng.standard_normal((n, 2))


def _rings(rng: np.random.Generator, n: int) -> np.ndarray:
  """Four concentric circles of radii 0.5, 1, 1.5, 2 (equal mass), radial noise std 0.04."""
  radius = 0.5 * rng.integers(1, 5, n) + 0.04 * rng.standard_normal(n)
  angle = rng.uniform(0.0, 2 * np.pi, n)
  return np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)


TOY_DISTRIBUTIONS: Dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    'checkerboard': _checkerboard,
    'eight_gaussians': _eight_gaussians,
    'swiss_roll': _swiss_roll,
    'two_moons': _two_moons,
    'rings': _rings,
}


def sample_toy(name: str, n: int, seed) -> np.ndarray:
  """n points of toy distribution `name`, float32 (n, 2), a deterministic function of `seed`
  (an int or a sequence of ints)."""
  if name not in TOY_DISTRIBUTIONS:
    raise ValueError(f'Unknown toy distribution {name!r}; allowed: {sorted(TOY_DISTRIBUTIONS)}.')
  return TOY_DISTRIBUTIONS[name](np.random.default_rng(seed), n).astype(np.float32)


class ToyDataset:
  """Infinite iterator of batches {'x': (batch_size, 2)}; batch k is drawn with seed
  (seed, split index, k). State: {'next_batch': k}."""

  def __init__(self, name: str, split: str, batch_size: int, seed: int):
    sample_toy(name, 0, 0)  # validates the name
    self.name, self.batch_size, self.seed = name, batch_size, seed
    self.split_index = SPLITS.index(split)
    self.next_batch = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    points = sample_toy(self.name, self.batch_size, (self.seed, self.split_index, self.next_batch))
    self.next_batch += 1
    return {'x': points}

  def get_state(self) -> dict:
    return {'next_batch': self.next_batch}

  def set_state(self, state: dict) -> None:
    self.next_batch = int(state['next_batch'])


def registered_datasets() -> list:
  return sorted(TOY_DISTRIBUTIONS)


def data_shape(config) -> tuple:
  """Shape of one example (without the batch axis)."""
  config_checks.choice(config, 'data.dataset', registered_datasets())
  return (2,)


def get_dataset(config, split: str, batch_size: int = None):
  """Iterator of batches of `config.data.dataset` for `split` ('train' or 'test').

  `batch_size` defaults to config.training.batch_size; the stream is seeded by config.seed.
  """
  name = config_checks.choice(config, 'data.dataset', registered_datasets())
  if split not in SPLITS:
    raise ValueError(f'Unknown split {split!r}; allowed: {list(SPLITS)}.')
  if batch_size is None:
    batch_size = config_checks.positive_int(config, 'training.batch_size')
  elif batch_size < 1:
    raise ValueError(f'batch_size = {batch_size} must be a positive integer.')
  return ToyDataset(name, split, batch_size, seed=config_checks.get(config, 'seed'))


def get_data_scaler(config) -> Callable:
  """Maps data in [0, 1] to the model's range: [-1, 1] if config.data.centered, else unchanged."""
  if config.data.get('centered', False):
    return lambda x: x * 2.0 - 1.0
  return lambda x: x


def get_data_inverse_scaler(config) -> Callable:
  """Inverse of `get_data_scaler`."""
  if config.data.get('centered', False):
    return lambda x: (x + 1.0) / 2.0
  return lambda x: x
