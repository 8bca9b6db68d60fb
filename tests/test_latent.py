"""The ends of a latent run: the scale-factor estimate against numpy, posterior sampling against
the posterior's moments, decoding as the inverse scaling of the latents."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import latent
from score_sde.models import autoencoder

CONFIG = autoencoder.AutoencoderConfig(in_channels=1, out_channels=1, block_channels=(8, 16),
                                       layers_per_block=1, latent_channels=2, norm_groups=4)


@pytest.fixture(scope='module')
def model():
  ae = autoencoder.AutoencoderKL(CONFIG)
  images = jax.random.uniform(jax.random.PRNGKey(0), (4, 8, 8, 1), minval=-1, maxval=1)
  return ae, ae.init(jax.random.PRNGKey(1), images)['params'], images


def test_scale_factor_is_one_over_the_std_of_all_elements():
  z = np.random.default_rng(0).normal(2.0, 0.25, size=(6, 4, 4, 3))
  assert latent.estimate_scale_factor(z) == pytest.approx(1 / np.sqrt(np.mean((z - z.mean())**2)),
                                                          rel=1e-12)
  with pytest.raises(ValueError, match='std 0.0 give no scale factor'):
    latent.estimate_scale_factor(np.ones((2, 3)))


def test_posterior_samples_have_the_posteriors_moments(model):
  ae, params, images = model
  mean, std = ae.apply({'params': params}, images, method='encode')
  draws = jax.vmap(lambda k: latent.encode(ae, params, images, k, 2.0, True))(
      jax.random.split(jax.random.PRNGKey(2), 4000))
  np.testing.assert_allclose(draws.mean(0), 2.0 * mean, atol=5 * 2.0 * float(std.max()) / 63)
  np.testing.assert_allclose(draws.std(0), 2.0 * std, rtol=0.08)
  np.testing.assert_allclose(latent.encode(ae, params, images, None, 2.0, False), 2.0 * mean,
                             rtol=1e-6)


def test_decode_undoes_the_scale(model):
  ae, params, images = model
  z = latent.encode(ae, params, images, None, 3.0, False)
  mean, _ = ae.apply({'params': params}, images, method='encode')
  np.testing.assert_allclose(latent.decode(ae, params, z, 3.0),
                             ae.apply({'params': params}, mean, method='decode'), atol=1e-5)
  assert jnp.all(jnp.isfinite(latent.decode(ae, params, z, 3.0)))
