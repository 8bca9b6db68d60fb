"""Image datasets as grain pipelines over random-access sources, without TensorFlow.

Sources (`data.dataset`):
  CIFAR10, SVHN, CELEBA, LSUN   tensorflow-datasets `data_source` (array_record files prepared
                                under data.data_dir; tfds names cifar10, svhn_cropped, celeb_a,
                                lsun/<data.category>)
  FFHQ, CelebAHQ, folder        image files (png, jpg, jpeg, bmp, webp) under data.path
                                (recursively), captioned when each has a .txt of the same name
                                beside it; FFHQ / CelebAHQ also the official StyleGAN TFRecord
                                file at data.tfrecords_path (score_sde/tfrecords.py)
  npz                           an .npz at data.path: 'train' and 'test' uint8 (N, H, W, C) arrays
                                (with optional 'train_label' / 'test_label', 'train_caption' /
                                'test_caption' string arrays), or one 'x' array (with optional
                                'label', 'caption')
  digits                        scikit-learn's bundled 8x8 handwritten digits (1,797 images, 1
                                channel, labels 0-9), no download
  digit_captions                the digits captioned from their label: 'a handwritten seven'
  digit_pairs                   two digits side by side (rows 4-11 of a 16 x 16 canvas),
                                captioned by their order: 'three left of eight' or, for the same
                                image, 'eight right of three' (each with probability 1/2), which
                                a model follows only by attending to which word names which
                                side; labels (left, right); 20,000 train and 1,000 test pairs
                                drawn from the digits of their own split

Examples are {'image': uint8 (H, W, C)} with 'label' (int32, (), or (2,) for the pairs) and
'caption' (str) where the source has them.

Splits: 'test' is CelebA's and LSUN's validation split. Sources with no split of their own (a
folder, a TFRecord file, an .npz with one 'x' array, the digits and the sets made of them) hold
out every tenth example
(index % 10 == 9) as 'test', in sorted-file, record or array order.

Preprocessing, as the official code (Song et al. 2021): CIFAR10 / SVHN / the digits sets resized to
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

from score_sde import captions, config_checks, tfrecords

TFDS_DATASETS = ('CIFAR10', 'SVHN', 'CELEBA', 'LSUN')
FILE_DATASETS = ('FFHQ', 'CelebAHQ', 'folder', 'npz')
CAPTIONED_DIGITS = ('digit_captions', 'digit_pairs')
IMAGE_DATASETS = TFDS_DATASETS + FILE_DATASETS + ('digits',) + CAPTIONED_DIGITS
NATIVE_CHANNELS = {'digits': 1, 'digit_captions': 1, 'digit_pairs': 1}  # others: 3 (RGB)
DIGIT_PAIRS = {'train': 20_000, 'test': 1_000}  # pairs of the 'digit_pairs' splits
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
  """Random access to uint8 images (N, H, W, C), optional labels (N, ...) and captions (N,)."""

  def __init__(self, images: np.ndarray, labels: Optional[np.ndarray],
               texts: Optional[np.ndarray] = None):
    self.images, self.labels, self.texts = images, labels, texts

  def __len__(self):
    return len(self.images)

  def __getitem__(self, index):
    example = {'image': self.images[index]}
    if self.labels is not None:
      example['label'] = self.labels[index]
    if self.texts is not None:
      example['caption'] = str(self.texts[index])
    return example


class _FileSource:
  """Random access to image files, decoded to uint8 RGB (H, W, 3), with the caption of a .txt
  file of the same name beside each (stripped) when every image has one."""

  def __init__(self, paths: list):
    self.paths = paths
    self.captioned = bool(paths) and all(os.path.exists(_caption_path(p)) for p in paths)

  def __len__(self):
    return len(self.paths)

  def __getitem__(self, index):
    with Image.open(self.paths[index]) as image:
      example = {'image': np.asarray(image.convert('RGB'))}
    if self.captioned:
      with open(_caption_path(self.paths[index]), encoding='utf-8') as f:
        example['caption'] = f.read().strip()
    return example


def split_captions(config, split: str) -> list:
  """Every caption of a split, in order, read without decoding the images; [] if the source
  has none."""
  source = open_source(config, split)
  if isinstance(source, _FileSource):
    if not source.captioned:
      return []
    return [open(_caption_path(p), encoding='utf-8').read().strip() for p in source.paths]
  texts = getattr(source, 'texts', None)
  return [] if texts is None else [str(t) for t in texts]


def _caption_path(image_path: str) -> str:
  return os.path.splitext(image_path)[0] + '.txt'


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
      return _ArraySource(arrays[split], arrays.get(f'{split}_label'),
                          arrays.get(f'{split}_caption'))
    if 'x' not in arrays:
      raise ValueError(f"{path} must hold 'train' and 'test' arrays or one 'x' array; it holds "
                       f'{sorted(arrays.keys())}.')
    keep = _holdout(np.arange(len(arrays['x'])), split)
    labels = arrays['label'][keep] if 'label' in arrays else None
    texts = arrays['caption'][keep] if 'caption' in arrays else None
    return _ArraySource(arrays['x'][keep], labels, texts)


def digits_split(split: str) -> tuple:
  """scikit-learn's digits of a split: images uint8 (N, 8, 8, 1) and labels int32 (N,)."""
  from sklearn.datasets import load_digits
  digits = load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  keep = _holdout(np.arange(len(images)), split)
  return images[keep], digits.target[keep].astype(np.int32)


def captioned_digits(split: str) -> tuple:
  """(images uint8 (N, 8, 8, 1), captions, labels int32 (N,)) of a digits split."""
  images, labels = digits_split(split)
  return images, [f'a handwritten {captions.DIGIT_WORDS[d]}' for d in labels], labels


def digit_pairs(split: str, count: int, seed: int = 0) -> tuple:
  """(images uint8 (count, 8, 16, 1), captions, labels int32 (count, 2) = (left, right)):
  random ordered pairs of the split's digits, the same for the same (split, count, seed)."""
  if count < 1:
    raise ValueError(f'count = {count} must be a positive number of pairs.')
  images, labels = digits_split(split)
  rng = np.random.default_rng([seed, int(split == 'test')])
  left, right = rng.integers(0, len(images), (2, count))
  flip = rng.random(count) < 0.5
  pairs = np.concatenate([images[left], images[right]], axis=2)
  names = captions.DIGIT_WORDS
  words = [(names[labels[a]], names[labels[b]]) for a, b in zip(left, right)]
  texts = [f'{b} right of {a}' if f else f'{a} left of {b}' for (a, b), f in zip(words, flip)]
  return pairs, texts, np.stack([labels[left], labels[right]], axis=1)


def pairs_canvas(pairs: np.ndarray) -> np.ndarray:
  """Digit pairs (N, 8, 16, C) centred on a square canvas (N, 16, 16, C) of zeros (rows 4-11),
  the images of data.dataset 'digit_pairs'."""
  canvas = np.zeros((len(pairs), 16, 16, pairs.shape[-1]), pairs.dtype)
  canvas[:, 4:12] = pairs
  return canvas


def _digits_source(split: str) -> _ArraySource:
  return _ArraySource(*digits_split(split))


def _captioned_digits_source(dataset: str, split: str) -> _ArraySource:
  if dataset == 'digit_captions':
    images, texts, labels = captioned_digits(split)
  else:
    images, texts, labels = digit_pairs(split, DIGIT_PAIRS[split])
    images = pairs_canvas(images)
  return _ArraySource(images, labels, np.asarray(texts))


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
  if dataset in CAPTIONED_DIGITS:
    return _captioned_digits_source(dataset, split)
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
  if dataset in ('CIFAR10', 'SVHN', 'digits') + CAPTIONED_DIGITS:
    return _resize(image, size, size)
  return _centre_crop(_resize_shorter_side(image, size), size)


def example_pipeline(config, split: str) -> grain.MapDataset:
  """The split as a grain MapDataset of {'image': uint8 (size, size, C), maybe 'label': int32}."""
  dataset = config.data.dataset
  size = config_checks.positive_int(config, 'data.image_size')

  def prepare(example):
    prepared = {'image': preprocess(dataset, np.asarray(example['image']), size)}
    if 'label' in example:
      prepared['label'] = np.asarray(example['label'], np.int32)
    if 'caption' in example:
      prepared['caption'] = example['caption']
    return prepared

  return grain.MapDataset.source(open_source(config, split)).map(prepare)


def augment(example: dict, rng: np.random.Generator, *, flip: bool, dequantize: bool) -> dict:
  """Training example -> {'x': float32 (H, W, C) in [0, 1], maybe 'label', 'caption'}: a
  horizontal flip with probability 1/2 and uniform dequantization, each if asked."""
  image = example['image']
  if flip and rng.random() < 0.5:
    image = image[:, ::-1]
  if dequantize:
    x = (image.astype(np.float32) + rng.random(image.shape, dtype=np.float32)) / 256.0
  else:
    x = image.astype(np.float32) / 255.0
  return {'x': x, **{k: v for k, v in example.items() if k in ('label', 'caption')}}
