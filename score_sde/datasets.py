"""Datasets behind one interface: `get_dataset(config, split, batch_size)` returns an iterator
of batches {'x': float32 (batch_size, *data_shape(config)), maybe 'label'}.

Iterators have `get_state()` / `set_state(state)` (JSON-serialisable dicts, as grain's), so a
resumed training run continues with exactly the batches an uninterrupted run would have seen.

Toy 2-D distributions (`data.dataset` one of TOY_DISTRIBUTIONS) are drawn on the fly: batch k of a
split comes from a numpy generator seeded with (seed, split, k), so every batch is deterministic
and the stream never repeats. Their points lie roughly in [-2.5, 2.5]^2. Image datasets are
grain pipelines (score_sde/image_datasets.py). Evaluation passes (`evaluation=True`) are finite,
in order, padded to whole batches with a mask.
"""
from typing import Callable, Dict, Optional

import jax
import numpy as np

from score_sde import config_checks, image_datasets

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
  """Infinite iterator of batches {'x': (batch_size, 2)}. Global batch k holds
  batch_size * process_count points drawn with seed (seed, split index, k); process p yields its
  rows [p * batch_size, (p + 1) * batch_size), so a batch is the same whatever the number of
  processes. State: {'next_batch': k}."""

  def __init__(self, name: str, split: str, batch_size: int, seed: int, process_index: int = 0,
               process_count: int = 1):
    sample_toy(name, 0, 0)  # validates the name
    self.name, self.batch_size, self.seed = name, batch_size, seed
    self.split_index = SPLITS.index(split)
    self.rows = slice(process_index * batch_size, (process_index + 1) * batch_size)
    self.global_batch = batch_size * process_count
    self.next_batch = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    points = sample_toy(self.name, self.global_batch,
                        (self.seed, self.split_index, self.next_batch))
    self.next_batch += 1
    return {'x': points[self.rows]}

  def get_state(self) -> dict:
    return {'next_batch': self.next_batch}

  def set_state(self, state: dict) -> None:
    self.next_batch = int(state['next_batch'])


class EvaluationBatches:
  """One pass, in order, over `num` examples of a random-access `examples(indices) -> dict of
  arrays`, for evaluation. Global batch j is examples [j G, (j + 1) G), G = batch_size *
  process_count; process p yields rows [p batch_size, (p + 1) batch_size) of it. Every batch has
  batch_size rows and 'mask': bool (batch_size,), False on the padding that fills the last
  batches (padding repeats example 0), so all processes make the same number of calls and no
  example is dropped or counted twice. State: {'next_batch': j}."""

  def __init__(self, examples: Callable, num: int, batch_size: int, process_index: int = 0,
               process_count: int = 1):
    self.examples, self.num, self.batch_size = examples, num, batch_size
    self.offset, self.global_batch = process_index * batch_size, batch_size * process_count
    self.num_batches = -(-num // self.global_batch)
    self.next_batch = 0

  def __iter__(self):
    return self

  def __len__(self):
    return self.num_batches

  def __next__(self) -> dict:
    if self.next_batch >= self.num_batches:
      raise StopIteration
    indices = self.next_batch * self.global_batch + self.offset + np.arange(self.batch_size)
    mask = indices < self.num
    batch = self.examples(np.where(mask, indices, 0))
    self.next_batch += 1
    return {**batch, 'mask': mask}

  def get_state(self) -> dict:
    return {'next_batch': self.next_batch}

  def set_state(self, state: dict) -> None:
    self.next_batch = int(state['next_batch'])


def registered_datasets() -> list:
  return sorted(TOY_DISTRIBUTIONS) + list(image_datasets.IMAGE_DATASETS)


def is_toy(config) -> bool:
  return config_checks.choice(config, 'data.dataset', registered_datasets()) in TOY_DISTRIBUTIONS


def data_shape(config) -> tuple:
  """Shape of one example (without the batch axis): (2,) for toy data, (image_size, image_size,
  num_channels) for images."""
  if is_toy(config):
    return (2,)
  size = config_checks.positive_int(config, 'data.image_size')
  channels = config_checks.positive_int(config, 'data.num_channels')
  native = image_datasets.NATIVE_CHANNELS.get(config.data.dataset, 3)
  if channels != native:
    raise ValueError(f'data.num_channels = {channels} does not match data.dataset = '
                     f'{config.data.dataset!r}, which has {native} channel(s).')
  return (size, size, channels)


def _seed(config, field: str) -> int:
  value = config.data.get(field)
  return config_checks.get(config, 'seed') if value is None else int(value)


def _check_request(config, split: str, batch_size: int) -> None:
  data_shape(config)
  if split not in SPLITS:
    raise ValueError(f'Unknown split {split!r}; allowed: {list(SPLITS)}.')
  if batch_size < 1:
    raise ValueError(f'batch_size = {batch_size} must be a positive integer.')


def num_examples(config, split: str) -> Optional[int]:
  """Number of examples of the split (all processes together); None for toy data (endless)."""
  _check_request(config, split, 1)
  if is_toy(config):
    return None
  return len(image_datasets.open_source(config, split))


def example_fields(config, split: str = 'train') -> tuple:
  """The entries of the split's examples besides the image ('label', 'caption'); toy data have
  none."""
  _check_request(config, split, 1)
  if is_toy(config):
    return ()
  source = image_datasets.open_source(config, split)
  return tuple(k for k in source[0] if k != 'image') if len(source) else ()


def get_dataset(config, split: str, batch_size: int, *, evaluation: bool = False,
                max_examples: Optional[int] = None):
  """Iterator of batches of this process's share of `split` ('train' or 'test').

  batch_size: rows per batch for this process (a global batch over jax.process_count() processes
  has batch_size * process_count rows). Batches are {'x': float32 (batch_size, *data_shape)},
  images in [0, 1], plus 'label': int32 (batch_size, ...) and 'caption': str (batch_size,) where
  the dataset has them. Iterators
  have get_state() / set_state(state) (JSON-serialisable), and resume bitwise.

  evaluation=False (training): shuffled with data.shuffle_seed (None: config.seed), reshuffled
  every epoch, data.num_epochs passes (None: endless), random flips (data.random_flip) and uniform
  dequantization (data.uniform_dequantization) drawn per example and epoch from the same seed.
  Process p reads examples p, p + P, p + 2P, ... (P processes). Toy data are endless draws.
  evaluation=True: one pass in order with no augmentation, as `EvaluationBatches` (with 'mask'),
  over the split or its first `max_examples` examples (required for toy data).
  """
  _check_request(config, split, batch_size)
  process_index, process_count = jax.process_index(), jax.process_count()
  if is_toy(config):
    name = config.data.dataset
    if not evaluation:
      return ToyDataset(name, split, batch_size, _seed(config, 'shuffle_seed'), process_index,
                        process_count)
    if max_examples is None:
      raise ValueError(f'Toy data ({name!r}) are endless: evaluation needs max_examples.')
    points = sample_toy(name, max_examples, (config_checks.get(config, 'seed'),
                                             SPLITS.index(split), 0))
    return EvaluationBatches(lambda indices: {'x': points[indices]}, max_examples, batch_size,
                             process_index, process_count)
  examples = image_datasets.example_pipeline(config, split)
  if evaluation:
    num = len(examples) if max_examples is None else min(max_examples, len(examples))

    def read(indices):
      rows = [examples[int(i)] for i in indices]
      batch = {'x': np.stack([row['image'] for row in rows]).astype(np.float32) / 255.0}
      for field in ('label', 'caption'):
        if field in rows[0]:
          batch[field] = np.stack([row[field] for row in rows])
      return batch

    return EvaluationBatches(read, num, batch_size, process_index, process_count)
  epochs = config.data.get('num_epochs')
  flip = bool(config_checks.get(config, 'data.random_flip'))
  if flip and config.data.dataset == 'digit_pairs':
    raise ValueError("data.random_flip = True would swap the digits of 'digit_pairs' against "
                     'their captions (left of / right of); set it to False.')
  dequantize = bool(config_checks.get(config, 'data.uniform_dequantization'))
  seed = _seed(config, 'shuffle_seed')
  pipeline = (examples[process_index::process_count].shuffle(seed=seed)
              .repeat(None if epochs is None else int(epochs))
              .random_map(lambda ex, rng: image_datasets.augment(ex, rng, flip=flip,
                                                                 dequantize=dequantize),
                          seed=seed + 1)
              .batch(batch_size, drop_remainder=True))
  return iter(pipeline.to_iter_dataset())


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
