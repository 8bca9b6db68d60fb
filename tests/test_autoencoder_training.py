"""The KL autoencoder's training step: its loss against the objective written out term by term
(the adaptive weight from full-parameter gradients of each term), the adversarial terms
switched off exactly before the discriminator starts, and a round trip on scikit-learn's digits
whose test PSNR a few hundred steps lift far above the mean image's."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

from score_sde import autoencoder_training as at
from score_sde import image_quality
from score_sde.models import autoencoder, patch_gan

CONFIG = autoencoder.AutoencoderConfig(in_channels=1, out_channels=1, block_channels=(16, 32),
                                       layers_per_block=1, latent_channels=2, norm_groups=8)


@pytest.fixture(scope='module')
def digits():
  """(train, test) 8x8x1 digits in [-1, 1]; every tenth image is a test image."""
  images = load_digits().images.astype(np.float32)[..., None] / 8.0 - 1.0
  held_out = np.arange(len(images)) % 10 == 0
  return images[~held_out], images[held_out]


def build(objective):
  ae, disc = autoencoder.AutoencoderKL(CONFIG), patch_gan.PatchDiscriminator(8, layers=1)
  optimizer = optax.adam(2e-3)
  state = at.init_state(jax.random.PRNGKey(0), ae, disc, objective, optimizer, optimizer,
                        (8, 8, 1))
  return ae, disc, state, jax.jit(at.get_train_step(ae, disc, objective, optimizer, optimizer))


def test_loss_is_the_objective_term_by_term(digits):
  objective = at.AutoencoderObjective(kl_weight=0.01, discriminator_weight=0.5,
                                      discriminator_start=0, sample_posterior=False)
  ae, disc, state, _ = build(objective)
  images = digits[0][:6]
  params = {**state.params, 'log_scale': jnp.asarray(0.3)}
  loss, aux = jax.jit(at.get_autoencoder_loss(ae, disc, objective))(
      params, state.discriminator_params, jax.random.PRNGKey(1), images, jnp.asarray(5))

  def nll_term(ae_params):
    rec = ae.apply({'params': ae_params}, images)  # decodes the posterior mean
    return jnp.mean(jnp.sum(jnp.abs(images - rec) / jnp.exp(0.3) + 0.3, axis=(1, 2, 3)))

  def adversarial_term(ae_params):
    rec = ae.apply({'params': ae_params}, images)
    return -jnp.mean(disc.apply({'params': state.discriminator_params}, rec))

  mean, std = ae.apply({'params': params['autoencoder']}, images, method='encode')
  kl = np.mean(0.5 * np.sum(np.asarray(mean)**2 + np.asarray(std)**2 - 1 -
                            np.log(np.asarray(std)**2), axis=(1, 2, 3)))
  last = lambda tree: tree['decoder']['conv_out']['kernel']  # noqa: E731
  nll_grad = last(jax.jit(jax.grad(nll_term))(params['autoencoder']))
  adversarial_grad = last(jax.jit(jax.grad(adversarial_term))(params['autoencoder']))
  weight = 0.5 * np.linalg.norm(nll_grad) / (np.linalg.norm(adversarial_grad) + 1e-4)
  nll = jax.jit(nll_term)(params['autoencoder'])
  adversarial = jax.jit(adversarial_term)(params['autoencoder'])
  np.testing.assert_allclose(aux['adaptive_weight'], weight, rtol=1e-4)
  np.testing.assert_allclose(loss, nll + 0.01 * kl + weight * adversarial, rtol=1e-5)
  assert float(aux['factor']) == 1.0


def test_adversarial_terms_are_off_until_the_discriminator_starts(digits):
  plain = build(at.AutoencoderObjective(kl_weight=1e-4))
  adversarial = build(at.AutoencoderObjective(kl_weight=1e-4, discriminator_weight=0.5,
                                              discriminator_start=3))
  plain_state, state = plain[2], adversarial[2]
  first_discriminator = state.discriminator_params
  for step in range(4):
    batch = digits[0][16 * step:16 * (step + 1)]
    plain_state, _ = plain[3](plain_state, batch)
    state, metrics = adversarial[3](state, batch)
    if step < 3:  # the same autoencoders (to rounding: XLA fuses the two programs apart), an
      # untouched discriminator
      for a, b in zip(jax.tree.leaves(plain_state.params), jax.tree.leaves(state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
      for a, b in zip(jax.tree.leaves(first_discriminator),
                      jax.tree.leaves(state.discriminator_params)):
        np.testing.assert_array_equal(a, b)
  assert float(metrics['factor']) == 1.0 and float(metrics['discriminator_loss']) > 0
  kernels = [s.params['autoencoder']['decoder']['conv_out']['kernel'] for s in (state, plain_state)]
  assert float(jnp.max(jnp.abs(kernels[0] - kernels[1]))) > 1e-4  # the adversarial gradient
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(first_discriminator), jax.tree.leaves(state.discriminator_params)))


def test_training_lifts_the_test_psnr_above_the_mean_images(digits):
  train, test = digits
  ae, _, state, step = build(at.AutoencoderObjective(kl_weight=1e-4))
  rng = np.random.default_rng(0)
  for _ in range(300):
    state, metrics = step(state, train[rng.choice(len(train), 64, replace=False)])
  reconstructions = np.clip(ae.apply({'params': state.params['autoencoder']}, test), -1, 1)
  psnr = np.mean(image_quality.psnr((reconstructions + 1) / 2, (test + 1) / 2))
  mean_image = np.broadcast_to(train.mean(0), test.shape)
  baseline = np.mean(image_quality.psnr((mean_image + 1) / 2, (test + 1) / 2))
  assert baseline < 12.0 and psnr > 19.0, (psnr, baseline)  # measured: 11.4 and 21.6 dB
  assert np.isfinite(float(metrics['loss']))


@pytest.mark.parametrize('settings, message', [
    (dict(reconstruction='l3'), r"reconstruction = 'l3' is not supported; allowed: \['l1', 'l2'\]"),
    (dict(kl_weight=-1.0), 'kl_weight = -1.0 must be >= 0'),
    (dict(discriminator_start=-5), 'discriminator_start = -5 must be >= 0'),
])
def test_bad_objectives_are_refused(settings, message):
  with pytest.raises(ValueError, match=message):
    at.AutoencoderObjective(**settings)
