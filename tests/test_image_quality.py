"""PSNR and SSIM against scikit-image's, recorded by scripts/make_ssim_reference.py on smooth
images and four distortions (noise, blur, shift, contrast), in colour and in grey."""
import os

import numpy as np
import pytest

from score_sde import image_quality

REFERENCE = os.path.join(os.path.dirname(__file__), 'data', 'ssim_reference.npz')


@pytest.mark.parametrize('colours', ['rgb', 'gray'])
def test_ssim_and_psnr_equal_scikit_images(colours):
  reference = np.load(REFERENCE)
  images, originals = reference[f'{colours}_images'], reference[f'{colours}_originals']
  np.testing.assert_allclose(image_quality.ssim(images, originals), reference[f'{colours}_ssim'],
                             atol=2e-5)
  np.testing.assert_allclose(image_quality.psnr(images, originals), reference[f'{colours}_psnr'],
                             rtol=1e-5)


def test_identical_images_have_ssim_one_and_psnr_follows_the_mse():
  images = np.random.default_rng(0).uniform(size=(2, 12, 12, 3)).astype(np.float32)
  np.testing.assert_allclose(image_quality.ssim(images, images), 1.0, atol=1e-6)
  shifted = np.clip(images + 0.1, 0, 1)
  mse = np.mean((shifted - images) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(image_quality.psnr(shifted, images), -10 * np.log10(mse), rtol=1e-5)
  np.testing.assert_allclose(image_quality.psnr(2 * shifted, 2 * images, max_value=2.0),
                             -10 * np.log10(mse), rtol=1e-5)


def test_ssim_refuses_images_smaller_than_its_window():
  small = np.zeros((1, 10, 12, 1), np.float32)
  with pytest.raises(ValueError, match='at least 11 x 11'):
    image_quality.ssim(small, small)
