"""Reference statistics of a dataset for FID / KID: Inception pool_3 features of a split.

  python scripts/fid_stats.py --config configs/vp/ddpmpp_continuous.py --out stats/cifar10.npz
      [--split train] [--max_examples 50000] [--batch_size 250]
      [--config.eval.inception_weights /path/pt_inception-2015-12-05-6726825d.pth]

Writes an .npz with 'mu', 'sigma' (float64), 'pool_3' (float32 features) and the dataset, split,
image size and count; point eval.fid_stats at it. Never overwrites an existing --out.
"""
import os
import sys

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file (its data section).')
flags.DEFINE_string('out', None, 'Output .npz path (must not exist).')
flags.DEFINE_enum('split', 'train', ['train', 'test'], 'Dataset split.')
flags.DEFINE_integer('max_examples', None, 'Use the first N examples of the split (default all).')
flags.DEFINE_integer('batch_size', 250, 'Images per Inception call.')
flags.mark_flags_as_required(['config', 'out'])


def main(argv):
  del argv
  import numpy as np

  from score_sde import datasets, evaluation, inception

  config = FLAGS.config
  if os.path.exists(FLAGS.out):
    raise FileExistsError(f'{FLAGS.out} exists; choose another --out (nothing was overwritten).')
  if datasets.is_toy(config):
    raise ValueError(f'data.dataset = {config.data.dataset!r} is 2-D toy data; FID needs images.')
  features_of = inception.get_inception_fn(
      inception.load_inception(inception.inception_weights_path(config)))
  batches = datasets.get_dataset(config, FLAGS.split, FLAGS.batch_size, evaluation=True,
                                 max_examples=FLAGS.max_examples)
  features = []
  for k, batch in enumerate(batches):
    features.append(np.asarray(features_of(batch['x'])['pool_3'])[batch['mask']])
    print(f'\rbatch {k + 1}/{len(batches)}', end='', flush=True)
  features = np.concatenate(features)
  evaluation.save_reference_statistics(
      FLAGS.out, features, dataset=config.data.dataset, split=FLAGS.split,
      image_size=config.data.image_size, count=len(features))
  print(f'\nWrote statistics of {len(features)} images to {FLAGS.out}')


if __name__ == '__main__':
  app.run(main)
