"""Reconstruction quality of images against their originals, per image, in JAX (jit-able, so an
evaluation runs on the devices): PSNR and SSIM.

Images are NHWC with values in [0, max_value] (the framework's images: [0, 1]); both functions
return one value per image, shape (B,).
"""
import jax
import jax.numpy as jnp
import numpy as np

# SSIM's constants (Wang et al. 2004, Sec. III.C): an 11-tap Gaussian window of std 1.5,
# C1 = (K1 L)^2, C2 = (K2 L)^2 with L the dynamic range.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def psnr(images, originals, max_value: float = 1.0):
  """10 log10(max_value^2 / MSE) in dB, the MSE over each image's pixels and channels; (B,).
  Identical images give +inf."""
  error = jnp.mean((jnp.asarray(images, jnp.float32) - originals) ** 2, axis=(1, 2, 3))
  return 10.0 * jnp.log10(max_value**2 / error)


def _gaussian_window() -> np.ndarray:
  """The normalised 1-D Gaussian taps (SSIM_WINDOW,)."""
  offsets = np.arange(SSIM_WINDOW) - (SSIM_WINDOW - 1) / 2
  taps = np.exp(-offsets**2 / (2 * SSIM_SIGMA**2))
  return taps / taps.sum()


def _local_mean(x):
  """Gaussian-weighted mean over every full 11 x 11 window ('valid'), per channel:
  (B, H, W, C) -> (B, H - 10, W - 10, C)."""
  taps = jnp.asarray(_gaussian_window(), x.dtype)
  channels = x.shape[-1]
  dimensions = ('NHWC', 'HWIO', 'NHWC')
  for kernel in (taps.reshape(-1, 1, 1, 1), taps.reshape(1, -1, 1, 1)):
    x = jax.lax.conv_general_dilated(x, jnp.tile(kernel, (1, 1, 1, channels)), (1, 1), 'VALID',
                                     dimension_numbers=dimensions,
                                     feature_group_count=channels)
  return x


def ssim(images, originals, max_value: float = 1.0):
  """Structural similarity (Wang et al. 2004, Eq. 13) with Gaussian windows: the mean over every
  full window position and channel of

    (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2)),

  with the local moments of the two images under the window; (B,), 1 for identical images.
  Images must be at least 11 x 11."""
  x = jnp.asarray(images, jnp.float32)
  y = jnp.asarray(originals, jnp.float32)
  if x.shape != y.shape or x.ndim != 4 or min(x.shape[1:3]) < SSIM_WINDOW:
    raise ValueError(f'SSIM needs two NHWC batches of one shape, at least {SSIM_WINDOW} x '
                     f'{SSIM_WINDOW} pixels; got {x.shape} and {y.shape}.')
  c1, c2 = (SSIM_K1 * max_value) ** 2, (SSIM_K2 * max_value) ** 2
  mu_x, mu_y = _local_mean(x), _local_mean(y)
  var_x = _local_mean(x * x) - mu_x**2
  var_y = _local_mean(y * y) - mu_y**2
  cov = _local_mean(x * y) - mu_x * mu_y
  index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2) /
           ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)))
  return jnp.mean(index, axis=(1, 2, 3))
