"""Image datasets as grain pipelines over random-access sources, without TensorFlow.

Sources (`data.dataset`):
  CIFAR10, SVHN, CELEBA, LSUN   tensorflow-datasets `data_source` (array_record files prepared
                                under data.data_dir; tfds names cifar10, svhn_cropped, celeb_a,
                                lsun/<data.category>)
  FFHQ, CelebAHQ, folder        image files (png, jpg, jpeg, bmp, webp) under data.path
                                (recursively); FFHQ / CelebAHQ also the official StyleGAN
                                TFRecord file at data.tfrecords_path (score_sde/tfrecords.py)
  npz                           an .npz at data.path: 'train' and 'test' uint8 (N, H, W, C) arrays
                                (with optional 'train_label' / 'test_label'), or one 'x' array
                                (with optional 'label')
  digits                        scikit-learn's bundled 8x8 handwritten digits (1,797 images, 1
                                channel, labels 0-9), no download

Splits: 'test' is CelebA's and LSUN's validation split. Sources with no split of their own (a
folder, a TFRecord file, an .npz with one 'x' array, the digits) hold out every tenth example
(index % 10 == 9) as 'test', in sorted-file, record or array order.

Preprocessing, as the official code (Song et al. 2021): CIFAR10 / SVHN / digits resized to
image_size if it differs; CELEBA centre-cropped to 140 x 140, then resized; LSUN, FFHQ, CelebAHQ,
folder and npz: shorter side resized to image_size, then centre-cropped. Resizing is PIL's
bilinear filter, antialiased when shrinking. Pixels are 8-bit values k, given to the model as
k / 255 in [0, 1]; with data.uniform_dequantization training images are (k + U[0, 1)) / 256.
The digits' 17 grey levels v = 0..16 become k = round(255 v / 16).
"""
import glob
import os
from typing import Optional

import grain
import numpy as np
from PIL import Image

from score_sde import config_checks, tfrecords

TFDS_DATASETS = ('CIFAR10', 'SVHN', 'CELEBA', 'LSUN')
FILE_DATASETS = ('FFHQ', 'CelebAHQ', 'folder', 'npz')
IMAGE_DATASETS = TFDS_DATASETS + FILE_DATASETS + ('digits',)
NATIVE_CHANNELS = {'digits': 1}  # every other dataset: 3 (RGB)
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')
HOLDOUT_EVERY = 10
CELEBA_CROP = 140


def _tfds_name(config) -> str:
  dataset = config.data.dataset
  if dataset == 'LSUN':
    return f"lsun/{config_checks.get(config, 'data.category')}"
  return {'CIFAR10': 'cifar10', 'SVHN': 'svhn_cropped', 'CELEBA': 'celeb_a'}[dataset]


def _tfds_split(config, split: str) -> str:
  if split == 'test' and config.data.dataset in ('CELEBA', 'LSUN'):
    return 'validation'
  return split


def _open_tfds(config, split: str):
  """The tfds array_record data source of the split; FileNotFoundError if not prepared."""
  import tensorflow_datasets as tfds
  name, data_dir = _tfds_name(config), config.data.get('data_dir')
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f'Dataset {name} is not prepared in {builder.data_dir} (data.data_dir = {data_dir!r}). '
        f'Prepare it on a machine with TensorFlow: `tfds build {name} --file_format=array_record '
        f'--data_dir=DIR`, copy DIR here and set --config.data.data_dir=DIR.')
  return builder.as_data_source(split=_tfds_split(config, split))


def _holdout(indices: np.ndarray, split: str) -> np.ndarray:
  test = indices % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
  return indices[test] if split == 'test' else indices[~test]


class _ArraySource:
  """Random access to uint8 images (N, H, W, C) and optional labels (N,)."""

  def __init__(self, images: np.ndarray, labels: Optional[np.ndarray]):
    self.images, self.labels = images, labels

  def __len__(self):
    return len(self.images)

  def __getitem__(self, index):
    example = {'image': self.images[index]}
    if self.labels is not None:
      example['label'] = self.labels[index]
    return example


class _FileSource:
  """Random access to image files, decoded to uint8 RGB (H, W, 3)."""

  def __init__(self, paths: list):
    self.paths = paths

  def __len__(self):
    return len(self.paths)

  def __getitem__(self, index):
    with Image.open(self.paths[index]) as image:
      return {'image': np.asarray(image.convert('RGB'))}


def _path(config) -> str:
  path = config.data.get('path')
  if not path:
    raise ValueError(f'data.dataset = {config.data.dataset!r} reads data.path, which is not set; '
                     'set --config.data.path to the image folder (or .npz file).')
  if not os.path.exists(path):
    raise FileNotFoundError(f'data.path = {path!r} does not exist.')
  return path


def _folder_source(config, split: str) -> _FileSource:
  root = _path(config)
  paths = sorted(p for p in glob.glob(os.path.join(root, '**', '*'), recursive=True)
                 if p.lower().endswith(IMAGE_EXTENSIONS))
  if not paths:
    raise FileNotFoundError(f'data.path = {root!r} holds no image files {IMAGE_EXTENSIONS}.')
  return _FileSource([paths[i] for i in _holdout(np.arange(len(paths)), split)])


def _npz_source(config, split: str) -> _ArraySource:
  path = _path(config)
  with np.load(path) as arrays:
    if 'train' in arrays and 'test' in arrays:
      return _ArraySource(arrays[split], arrays.get(f'{split}_label'))
    if 'x' not in arrays:
      raise ValueError(f"{path} must hold 'train' and 'test' arrays or one 'x' array; it holds "
                       f'{sorted(arrays.keys())}.')
    keep = _holdout(np.arange(len(arrays['x'])), split)
    labels = arrays['label'][keep] if 'label' in arrays else None
    return _ArraySource(arrays['x'][keep], labels)


def digits_split(split: str) -> tuple:
  """scikit-learn's digits of a split: images uint8 (N, 8, 8, 1) and labels int32 (N,)."""
  from sklearn.datasets import load_digits
  digits = load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  keep = _holdout(np.arange(len(images)), split)
  return images[keep], digits.target[keep].astype(np.int32)


def _digits_source(split: str) -> _ArraySource:
  return _ArraySource(*digits_split(split))


def _tfrecord_source(config, split: str) -> tfrecords.TFRecordImages:
  path = config.data.tfrecords_path
  if not os.path.exists(path):
    raise FileNotFoundError(f'data.tfrecords_path = {path!r} does not exist.')
  return tfrecords.TFRecordImages(path, select=lambda indices: _holdout(indices, split))


def open_source(config, split: str):
  """The random-access source of examples {'image': uint8 (H, W, C), maybe 'label'} of a split."""
  dataset = config.data.dataset
  if dataset in TFDS_DATASETS:
    return _open_tfds(config, split)
  if dataset == 'digits':
    return _digits_source(split)
  if (dataset in ('FFHQ', 'CelebAHQ') and not config.data.get('path') and
      config.data.get('tfrecords_path')):
    return _tfrecord_source(config, split)
  if dataset == 'npz' or (dataset in ('FFHQ', 'CelebAHQ') and
                          str(config.data.get('path', '')).endswith('.npz')):
    return _npz_source(config, split)
  return _folder_source(config, split)


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  if image.shape[:2] == (height, width):
    return image
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  resized = np.asarray(pil.resize((width, height), Image.BILINEAR))
  return resized.reshape(height, width, image.shape[-1])


def _centre_crop(image: np.ndarray, size: int) -> np.ndarray:
  top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
  return image[top:top + size, left:left + size]


def _resize_shorter_side(image: np.ndarray, size: int) -> np.ndarray:
  height, width = image.shape[:2]
  ratio = size / min(height, width)
  return _resize(image, max(size, round(height * ratio)), max(size, round(width * ratio)))


def preprocess(dataset: str, image: np.ndarray, size: int) -> np.ndarray:
  """One uint8 image (H, W, C) -> uint8 (size, size, C), by the dataset's recipe."""
  image = image.reshape(*image.shape[:2], -1)
  if dataset == 'CELEBA':
    return _resize(_centre_crop(image, CELEBA_CROP), size, size)
  if dataset in ('CIFAR10', 'SVHN', 'digits'):
    return _resize(image, size, size)
  return _centre_crop(_resize_shorter_side(image, size), size)


def example_pipeline(config, split: str) -> grain.MapDataset:
  """The split as a grain MapDataset of {'image': uint8 (size, size, C), maybe 'label': int32}."""
  dataset = config.data.dataset
  size = config_checks.positive_int(config, 'data.image_size')

  def prepare(example):
    prepared = {'image': preprocess(dataset, np.asarray(example['image']), size)}
    if 'label' in example:
      prepared['label'] = np.int32(example['label'])
    return prepared

  return grain.MapDataset.source(open_source(config, split)).map(prepare)


def augment(example: dict, rng: np.random.Generator, *, flip: bool, dequantize: bool) -> dict:
  """Training example -> {'x': float32 (H, W, C) in [0, 1], maybe 'label'}: a horizontal flip with
  probability 1/2 and uniform dequantization, each if asked."""
  image = example['image']
  if flip and rng.random() < 0.5:
    image = image[:, ::-1]
  if dequantize:
    x = (image.astype(np.float32) + rng.random(image.shape, dtype=np.float32)) / 256.0
  else:
    x = image.astype(np.float32) / 255.0
  return {'x': x, **({'label': example['label']} if 'label' in example else {})}
