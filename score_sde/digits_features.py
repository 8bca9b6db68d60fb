"""A quality metric for models of scikit-learn's 8x8 digits, where no Inception weights exist: a
small CNN classifier trained by this module on the digits' train split (weights committed in
score_sde/assets/digits_classifier.npz; `python scripts/train_digits_classifier.py` retrains
them), and on its features

  FD-digits: the Frechet distance (evaluation.frechet_distance) between the 64 penultimate
             features of a set of images and those of the test split, the digits' FID;
  accuracy:  the fraction of images the classifier reads as a requested digit (for conditional
             models: does the sample show the label it was asked for).

Images are NHWC (B, H, W, 1) in [0, 1]; larger ones are reduced to 8x8 (block means) before the
network, and FD-digits compares them with the test split at their own size (DigitsMetric's
image_size), so a model of digits upscaled to 16x16 is judged against the data it learned.
FD-digits depends on the number of images, as FID does: compare figures of equal counts.
"""
import os
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from score_sde import evaluation, image_datasets

WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'assets',
                       'digits_classifier.npz')
FEATURES = 64
NUM_CLASSES = 10


class DigitsClassifier(nn.Module):
  """images (B, 8, 8, 1) in [0, 1] -> (logits (B, 10), features (B, 64)): 3x3 convs of 32 and 64
  channels (the second with stride 2), a 3x3 conv of 64, ReLUs, then a 64-unit ReLU layer (the
  features) and the logits."""

  @nn.compact
  def __call__(self, images):
    x = nn.relu(nn.Conv(32, (3, 3), name='conv_0')(images - 0.5))
    x = nn.relu(nn.Conv(64, (3, 3), strides=(2, 2), name='conv_1')(x))
    x = nn.relu(nn.Conv(64, (3, 3), name='conv_2')(x))
    features = nn.relu(nn.Dense(FEATURES, name='features')(x.reshape(x.shape[0], -1)))
    return nn.Dense(NUM_CLASSES, name='logits')(features), features


def to_classifier_input(images) -> jax.Array:
  """images (B, H, W, 1) in [0, 1] -> (B, 8, 8, 1) float32: the mean of each (H/8 x W/8) block
  where H and W are multiples of 8, else an antialiased bilinear resize. ValueError for other
  channels."""
  images = jnp.asarray(images, jnp.float32)
  if images.ndim != 4 or images.shape[-1] != 1:
    raise ValueError(f'digit images must be (B, H, W, 1) in [0, 1]; got shape {images.shape}.')
  batch, height, width, _ = images.shape
  if height % 8 == 0 and width % 8 == 0:
    return images.reshape(batch, 8, height // 8, 8, width // 8, 1).mean(axis=(2, 4))
  return jax.image.resize(images, (batch, 8, 8, 1), 'linear', antialias=True)


def _shifted(key, images):
  """Each image shifted by -1, 0 or 1 pixels in each direction (zeros shifted in)."""
  padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
  offsets = jax.random.randint(key, (images.shape[0], 2), 0, 3)
  crop = lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), (8, 8, 1))  # noqa: E731
  return jax.vmap(crop)(padded, offsets)


def train(seed: int = 0, steps: int = 3000, batch_size: int = 128, lr: float = 1e-3) -> dict:
  """Trains the classifier on the train split (random 1-pixel shifts, Adam, cross-entropy);
  returns its params."""
  images, labels = image_datasets.digits_split('train')
  images = jnp.asarray(images, jnp.float32) / 255.0  # divided by XLA, as for the committed weights
  labels = jnp.asarray(labels)
  model, optimizer = DigitsClassifier(), optax.adam(lr)
  key = jax.random.PRNGKey(seed)
  params = model.init(key, images[:1])['params']

  def loss_fn(params, key):
    index_key, shift_key = jax.random.split(key)
    batch = jax.random.choice(index_key, len(images), (batch_size,), replace=False)
    logits, _ = model.apply({'params': params}, _shifted(shift_key, images[batch]))
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels[batch]).mean()

  @jax.jit
  def step(params, opt_state, key):
    grads = jax.grad(loss_fn)(params, key)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  # One compiled step per update, not a lax.scan: inside a loop XLA:CPU computes convolution
  # weight gradients 10-20x slower (losses.get_train_step).
  opt_state = optimizer.init(params)
  for k in range(steps):
    params, opt_state = step(params, opt_state, jax.random.fold_in(key, k + 1))
  return params


def save(params: dict, path: str = WEIGHTS) -> str:
  """Writes params as an .npz of '/'-joined paths."""
  flat = {'/'.join(k.key for k in path_): np.asarray(v)
          for path_, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  os.makedirs(os.path.dirname(path), exist_ok=True)
  np.savez(path, **flat)
  return path


def load(path: str = WEIGHTS) -> dict:
  """The params saved by `save` (by default the committed weights)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist; `python scripts/train_digits_classifier.py` '
                            'writes it.')
  params = {}
  with np.load(path) as arrays:
    for name in arrays.files:
      *parents, leaf = name.split('/')
      node = params
      for parent in parents:
        node = node.setdefault(parent, {})
      node[leaf] = jnp.asarray(arrays[name])
  return params


def split_images(split: str, image_size: int = 8) -> tuple:
  """A digits split as the data pipeline delivers it at `image_size`
  (image_datasets.preprocess): images float32 (N, size, size, 1) in [0, 1], labels int32 (N,)."""
  images, labels = image_datasets.digits_split(split)
  resized = np.stack([image_datasets.preprocess('digits', image, image_size) for image in images])
  return resized.astype(np.float32) / 255.0, labels


class DigitsMetric:
  """The classifier's logits and features, FD-digits against the test split, and accuracy.

  `image_size`: the size of the images to judge (a digits config's data.image_size). The
  reference statistics are those of the test split as the data pipeline delivers it at that
  size (image_datasets.preprocess), so the test split itself scores 0 at every size.
  """

  def __init__(self, params: Optional[dict] = None, image_size: int = 8):
    self.params = load() if params is None else params
    self._apply = jax.jit(lambda p, x: DigitsClassifier().apply({'params': p}, x))
    self.test_images, self.test_labels = split_images('test', image_size)
    self.test_features = self.features(self.test_images)
    self.reference = evaluation.feature_statistics(self.test_features)

  def logits_and_features(self, images) -> tuple:
    """(logits (B, 10), features (B, 64)) as numpy arrays of images (B, H, W, 1) in [0, 1]."""
    logits, features = self._apply(self.params, to_classifier_input(images))
    return np.asarray(logits), np.asarray(features)

  def features(self, images) -> np.ndarray:
    return self.logits_and_features(images)[1]

  def accuracy(self, images, labels) -> float:
    """Fraction of images whose most likely class is their label (labels int (B,))."""
    predicted = np.argmax(self.logits_and_features(images)[0], axis=1)
    return float(np.mean(predicted == np.asarray(labels)))

  def frechet_distance(self, images) -> float:
    """FD-digits of images (B, H, W, 1) in [0, 1] against the test split."""
    mu, sigma = evaluation.feature_statistics(self.features(images))
    return float(evaluation.frechet_distance(mu, sigma, *self.reference))
