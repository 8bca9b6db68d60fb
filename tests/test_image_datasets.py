"""Image pipelines: tfds sources on mock data, folders, .npz files and the bundled digits.

The mock CIFAR-10 / CelebA / LSUN examples come from tensorflow_datasets.testing.mock_data (random
images of each dataset's shapes); every expectation is recomputed here with numpy.
"""
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from score_sde import captions, datasets, image_datasets
from configs import default_cifar10_configs

NUM_MOCK = 10


def image_config(dataset='CIFAR10', **data):
  config = default_cifar10_configs.get_default_configs()
  config.data.update({'dataset': dataset, 'random_flip': False, 'uniform_dequantization': False,
                      **data})
  return config


@pytest.fixture
def mock_tfds(monkeypatch):
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'is_prepared', lambda self: True)
  with tfds.testing.mock_data(num_examples=NUM_MOCK, policy=tfds.testing.MockPolicy.USE_CODE):
    yield


def all_examples(config, split='train'):
  """The split's examples in order, from the evaluation pass (no augmentation)."""
  batches = list(datasets.get_dataset(config, split, 4, evaluation=True))
  x = np.concatenate([b['x'][b['mask']] for b in batches])
  has_labels = 'label' in batches[0]
  labels = np.concatenate([b['label'][b['mask']] for b in batches]) if has_labels else None
  return x, labels


def test_cifar10_training_batches_flips_and_dequantization(mock_tfds):
  plain, labels = all_examples(image_config())
  assert plain.shape == (NUM_MOCK, 32, 32, 3) and plain.dtype == np.float32
  assert labels.dtype == np.int32
  np.testing.assert_array_equal(plain * 255, np.round(plain * 255))  # the 8-bit grid
  config = image_config(random_flip=True, uniform_dequantization=True)
  batch = next(datasets.get_dataset(config, 'train', NUM_MOCK))  # one whole, shuffled epoch
  assert batch['x'].shape == (NUM_MOCK, 32, 32, 3) and batch['label'].shape == (NUM_MOCK,)
  levels = np.floor(batch['x'] * 256)  # (k + u) / 256 with u in [0, 1)
  flipped = 0
  for level in levels:
    straight = [i for i in range(NUM_MOCK) if np.array_equal(level, plain[i] * 255)]
    mirrored = [i for i in range(NUM_MOCK) if np.array_equal(level, plain[i, :, ::-1] * 255)]
    assert len(straight) + len(mirrored) >= 1
    flipped += not straight
  assert sorted(batch['label']) == sorted(labels)
  assert 1 <= flipped <= NUM_MOCK - 1  # about half are mirrored (p = 1 - 2^-9 here)


def test_training_stream_resumes_bitwise_mid_epoch(mock_tfds):
  config = image_config(random_flip=True, uniform_dequantization=True)
  stream = datasets.get_dataset(config, 'train', 3)
  for _ in range(4):  # into the second epoch
    next(stream)
  state = stream.get_state()
  expected = [next(stream)['x'] for _ in range(3)]
  resumed = datasets.get_dataset(config, 'train', 3)
  resumed.set_state(state)
  for x in expected:
    np.testing.assert_array_equal(next(resumed)['x'], x)


def test_num_epochs_ends_the_stream(mock_tfds):
  config = image_config(num_epochs=2)
  assert len(list(datasets.get_dataset(config, 'train', 5))) == 4


def test_evaluation_pass_pads_masks_and_covers_every_example_once(mock_tfds):
  config = image_config()
  batches = list(datasets.get_dataset(config, 'test', 4, evaluation=True))
  assert [int(b['mask'].sum()) for b in batches] == [4, 4, 2]
  assert all(b['x'].shape == (4, 32, 32, 3) for b in batches)
  source = image_datasets.open_source(config, 'test')
  expected = np.stack([source[i]['image'] for i in range(NUM_MOCK)]) / 255.0
  got = np.concatenate([b['x'][b['mask']] for b in batches])
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-7)
  assert datasets.num_examples(config, 'test') == NUM_MOCK
  capped = list(datasets.get_dataset(config, 'test', 4, evaluation=True, max_examples=5))
  assert [int(b['mask'].sum()) for b in capped] == [4, 1]


def test_processes_read_disjoint_shards(mock_tfds, monkeypatch):
  config = image_config()
  plain, _ = all_examples(config)
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  epochs, evaluation = [], []
  for index in (0, 1):
    monkeypatch.setattr(jax, 'process_index', lambda index=index: index)
    epochs.append(next(datasets.get_dataset(config, 'train', NUM_MOCK // 2))['x'])
    evaluation.append(list(datasets.get_dataset(config, 'train', 2, evaluation=True)))
  # One epoch of each process's shuffled shard: together every example once.
  key = lambda x: x.tobytes()
  assert sorted(map(key, np.concatenate(epochs))) == sorted(map(key, plain))
  # Evaluation: process p holds rows [2p, 2p + 2) of each global batch of 4, equal call counts.
  assert len(evaluation[0]) == len(evaluation[1]) == 3
  rows = np.concatenate([np.concatenate([evaluation[p][j]['x'][evaluation[p][j]['mask']]
                                         for p in (0, 1)]) for j in range(3)])
  np.testing.assert_array_equal(rows, plain)


def test_celeba_is_centre_cropped_then_resized(mock_tfds):
  raw = np.asarray(image_datasets.open_source(image_config('CELEBA'), 'train')[0]['image'])
  assert raw.shape == (218, 178, 3)
  cropped = image_datasets.preprocess('CELEBA', raw, 140)
  np.testing.assert_array_equal(cropped, raw[39:179, 19:159])
  x, _ = all_examples(image_config('CELEBA', image_size=16))
  assert x.shape == (NUM_MOCK, 16, 16, 3)


def test_resizing_a_ramp_interpolates_it():
  # Bilinear (triangle-filter) shrinking of a linear ramp gives the ramp at the output pixel
  # centres: output pixel i sits at input coordinate (i + 0.5) * scale - 0.5.
  ramp = np.tile(np.arange(140, dtype=np.float64)[None, :, None], (140, 1, 3))
  image = np.round(ramp * 255 / 139).astype(np.uint8)
  out = image_datasets.preprocess('CELEBA', image, 35)
  centres = (np.arange(35) + 0.5) * 4 - 0.5
  np.testing.assert_allclose(out[17, 3:-3, 0], (centres * 255 / 139)[3:-3], atol=1.01)


def test_lsun_resizes_the_shorter_side_and_centre_crops(mock_tfds):
  config = image_config('LSUN', category='church_outdoor', image_size=8)
  raw = np.asarray(image_datasets.open_source(config, 'test')[0]['image'])
  out = image_datasets.preprocess('LSUN', raw, 8)
  assert out.shape == (8, 8, 3)
  height, width = raw.shape[:2]
  scale = 8 / min(height, width)
  big = np.asarray(Image.fromarray(raw).resize((max(8, round(width * scale)),
                                                max(8, round(height * scale))), Image.BILINEAR))
  top, left = (big.shape[0] - 8) // 2, (big.shape[1] - 8) // 2
  np.testing.assert_array_equal(out, big[top:top + 8, left:left + 8])


def test_missing_tfds_dataset_says_how_to_prepare_it(tmp_path):
  config = image_config(data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match=r'tfds build cifar10 --file_format=array_record'):
    datasets.get_dataset(config, 'train', 4)


def test_folder_and_npz_hold_out_every_tenth_example(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (12, 6, 10, 3), dtype=np.uint8)
  for i, image in enumerate(images):
    Image.fromarray(image).save(tmp_path / f'img_{i:02d}.png')
  np.savez(tmp_path / 'data.npz', x=images, label=np.arange(12))
  for dataset, path in (('folder', str(tmp_path)), ('npz', str(tmp_path / 'data.npz'))):
    config = image_config(dataset, path=path, image_size=6)
    train_x, _ = all_examples(config, 'train')
    test_x, _ = all_examples(config, 'test')
    assert len(train_x) == 11 and len(test_x) == 1
    np.testing.assert_array_equal(test_x[0] * 255, images[9][:, 2:8])  # centre crop of 6 x 10
  with pytest.raises(ValueError, match=r'data.path, which is not set'):
    datasets.get_dataset(image_config('folder', path=None, image_size=6), 'train', 2)


def test_digits_are_sklearn_digits_on_the_8_bit_grid():
  from sklearn.datasets import load_digits
  digits = load_digits()
  config = image_config('digits', image_size=8, num_channels=1)
  assert datasets.data_shape(config) == (8, 8, 1)
  test_x, test_labels = all_examples(config, 'test')
  held_out = np.arange(len(digits.images)) % 10 == 9
  np.testing.assert_allclose(test_x[..., 0] * 255, np.round(digits.images[held_out] * 255 / 16))
  np.testing.assert_array_equal(test_labels, digits.target[held_out])
  assert datasets.num_examples(config, 'train') == 1797 - held_out.sum()
  with pytest.raises(ValueError, match=r'data.num_channels = 3 does not match'):
    datasets.data_shape(image_config('digits', image_size=8, num_channels=3))


def test_folder_and_npz_captions_reach_the_batches(tmp_path):
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
  texts = [f'caption number {i}' for i in range(10)]
  for i, image in enumerate(images):
    Image.fromarray(image).save(tmp_path / f'img_{i}.png')
    (tmp_path / f'img_{i}.txt').write_text(f'  {texts[i]}\n')
  np.savez(tmp_path / 'split.npz', train=images[:7], test=images[7:],
           train_caption=np.array(texts[:7]), test_caption=np.array(texts[7:]))
  folder = image_config('folder', path=str(tmp_path), image_size=4)
  test = next(datasets.get_dataset(folder, 'test', 1, evaluation=True))
  assert list(test['caption']) == [texts[9]]
  assert datasets.example_fields(folder, 'train') == ('caption',)
  npz = image_config('npz', path=str(tmp_path / 'split.npz'), image_size=4)
  train = next(datasets.get_dataset(npz, 'train', 7))
  assert sorted(train['caption']) == sorted(texts[:7])  # shuffled with their images
  for x, caption in zip(train['x'], train['caption']):
    np.testing.assert_array_equal(np.round(x * 255), images[texts.index(caption)])
  (tmp_path / 'img_3.txt').unlink()  # not every image is captioned: no captions at all
  assert datasets.example_fields(folder, 'train') == ()


def test_digit_pairs_are_captioned_canvases_of_two_digits():
  config = image_config('digit_pairs', image_size=16, num_channels=1)
  batch = next(datasets.get_dataset(config, 'test', 8, evaluation=True))
  pairs, texts, labels = image_datasets.digit_pairs('test', image_datasets.DIGIT_PAIRS['test'])
  assert batch['x'].shape == (8, 16, 16, 1) and list(batch['caption']) == texts[:8]
  np.testing.assert_array_equal(batch['label'], labels[:8])
  np.testing.assert_array_equal(np.round(batch['x'][:, 4:12] * 255), pairs[:8])
  assert not batch['x'][:, :4].any() and not batch['x'][:, 12:].any()
  assert datasets.num_examples(config, 'train') == 20_000
  single = image_config('digit_captions', image_size=8, num_channels=1)
  first = next(datasets.get_dataset(single, 'test', 2, evaluation=True))
  assert list(first['caption']) == [f'a handwritten {captions.DIGIT_WORDS[d]}'
                                    for d in first['label']]
  with pytest.raises(ValueError, match='random_flip = True would swap'):
    datasets.get_dataset(image_config('digit_pairs', image_size=16, num_channels=1,
                                      random_flip=True), 'train', 8)
