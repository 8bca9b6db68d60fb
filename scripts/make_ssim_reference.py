"""Records scikit-image's SSIM and PSNR of a few image pairs (tests/data/ssim_reference.npz), the
reference for score_sde.image_quality. Runs in a scratch venv with scikit-image (never a
dependency of the project):

    SCRATCH/ref/bin/pip install scikit-image
    SCRATCH/ref/bin/python scripts/make_ssim_reference.py

The pairs: smooth originals (sums of random sinusoids, in [0, 1]) against noisier, blurred,
shifted and contrast-changed copies, 3 channels at 16 x 20 and 1 channel at 12 x 12.
"""
import os

import numpy as np
from skimage import metrics

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tests', 'data',
                   'ssim_reference.npz')


def smooth_images(rng, count, height, width, channels):
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing='ij')
  images = np.zeros((count, height, width, channels))
  for _ in range(4):
    frequency = rng.uniform(0.1, 0.6, (count, 1, 1, channels, 2))
    phase = rng.uniform(0, 2 * np.pi, (count, 1, 1, channels))
    images += np.sin(frequency[..., 0] * rows[None, :, :, None] +
                     frequency[..., 1] * cols[None, :, :, None] + phase)
  return (images - images.min()) / (images.max() - images.min())


def distorted(rng, originals):
  """Four distortions of the originals, one per image (count 4)."""
  noisy = np.clip(originals[0] + rng.normal(0, 0.1, originals[0].shape), 0, 1)
  blurred = (originals[1] + np.roll(originals[1], 1, 0) + np.roll(originals[1], 1, 1)) / 3
  shifted = np.roll(originals[2], 2, 1)
  contrast = 0.25 + 0.5 * originals[3]
  return np.stack([noisy, blurred, shifted, contrast])


def main():
  rng = np.random.default_rng(0)
  record = {}
  for name, shape in (('rgb', (16, 20, 3)), ('gray', (12, 12, 1))):
    originals = smooth_images(rng, 4, *shape).astype(np.float32)
    images = distorted(rng, originals).astype(np.float32)
    record[f'{name}_originals'], record[f'{name}_images'] = originals, images
    record[f'{name}_ssim'] = np.array([
        metrics.structural_similarity(a, b, data_range=1.0, channel_axis=-1,
                                      gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False)
        for a, b in zip(images, originals)])
    record[f'{name}_psnr'] = np.array([metrics.peak_signal_noise_ratio(b, a, data_range=1.0)
                                       for a, b in zip(images, originals)])
  np.savez(OUT, **record)
  print({k: v for k, v in record.items() if k.endswith(('ssim', 'psnr'))})


if __name__ == '__main__':
  main()
