"""Trains the digits feature network (score_sde/digits_features.py) on the digits' train split
and writes its weights to score_sde/assets/digits_classifier.npz, printing its test accuracy and
the FD-digits of the train split against the test split:

    python scripts/train_digits_classifier.py [--seed 0] [--steps 3000]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from score_sde import digits_features  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--steps', type=int, default=3000)
  args = parser.parse_args()
  params = digits_features.train(args.seed, args.steps)
  path = digits_features.save(params)
  metric = digits_features.DigitsMetric(params)
  train_images, _ = digits_features.split_images('train')
  print({'weights': path, 'test_accuracy': metric.accuracy(metric.test_images, metric.test_labels),
         'fd_train_vs_test': metric.frechet_distance(train_images)})

if __name__ == '__main__':
  main()
