"""The two ends of a latent-space run (Rombach et al. 2022, Sec. 3 and 4.3.2): images are
encoded into latents on the way in, samples decoded on the way out; the score model, losses and
samplers in between see the latents as plain arrays.

  encode:  images (B, H, W, C) in [-1, 1] -> scaled latents (B, H/f, W/f, c) = scale x z, with z a
           draw from the posterior q(z | x) or its mean;
  decode:  scaled latents -> decoder output (B, H, W, C), unclamped.

The scale makes the latents' standard deviation about 1, the variance the SDEs' priors assume.
Where a run sets none, it is estimated from the first training batch as LDM does:
1 / std(z) over all its elements (`estimate_scale_factor`), and recorded in the run's config.
"""
import jax
import jax.numpy as jnp
import numpy as np


def estimate_scale_factor(raw_latents) -> float:
  """1 / std of all elements of raw latents (any shape), in float64; ValueError if they are
  constant."""
  std = float(np.std(np.asarray(raw_latents, np.float64)))
  if not std > 0:
    raise ValueError(f'latents with std {std} give no scale factor; the autoencoder maps the '
                     'batch to a constant.')
  return 1.0 / std


def encode(autoencoder, params, images, key, scale: float, sample_posterior: bool):
  """Scaled latents of images (see the module docstring); `key` draws the posterior sample
  (unused for the mean). Pure jnp, for jit."""
  mean, std = autoencoder.apply({'params': params}, images, method='encode')
  raw = mean + std * jax.random.normal(key, mean.shape) if sample_posterior else mean
  return raw * scale


def decode(autoencoder, params, latents, scale: float):
  """Decoder output of scaled latents (see the module docstring). Pure jnp, for jit."""
  return autoencoder.apply({'params': params}, jnp.asarray(latents) / scale, method='decode')
