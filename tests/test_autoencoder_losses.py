"""The autoencoder's training terms against their formulas: the posterior's KL against the
general Gaussian KL with full covariance matrices, the learned-scale likelihood's minimiser, the
hinge and generator losses against explicit sums, the adaptive weight against hand-derived
gradients of a linear last layer; and the PatchGAN discriminator's 70 x 70 receptive field."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import autoencoder_losses as al
from score_sde.models import patch_gan


def test_posterior_kl_equals_the_general_gaussian_kl():
  rng = np.random.default_rng(0)
  mean = rng.normal(size=(3, 2, 2, 2))
  std = rng.uniform(0.2, 2.0, size=(3, 2, 2, 2))
  for b in range(3):
    m, covariance = mean[b].ravel(), np.diag(std[b].ravel() ** 2)
    # KL(N(m, S) || N(0, I)) = 1/2 (tr S + m^T m - k - log det S)
    expected = 0.5 * (np.trace(covariance) + m @ m - len(m) - np.linalg.slogdet(covariance)[1])
    np.testing.assert_allclose(al.gaussian_kl(mean, std)[b], expected, rtol=1e-5)


def test_likelihood_scale_is_the_summed_error_at_zero_and_learns_the_mean_error():
  error = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 4, 4, 3)), jnp.float32)
  np.testing.assert_allclose(al.negative_log_likelihood(error, 0.0),
                             np.sum(np.asarray(error), axis=(1, 2, 3)), rtol=1e-6)
  # d/ds sum(e exp(-s) + s) = 0 at s = log(mean e)
  best = jnp.log(jnp.mean(error))
  gradient = jax.grad(lambda s: al.negative_log_likelihood(error, s).sum())(best)
  np.testing.assert_allclose(gradient, 0.0, atol=1e-4)


def test_reconstruction_errors_and_refusal():
  x, y = np.array([[[[0.2, 0.9]]]]), np.array([[[[0.5, 0.4]]]])
  np.testing.assert_allclose(al.reconstruction_error(x, y, 'l1'), [[[[0.3, 0.5]]]], rtol=1e-6)
  np.testing.assert_allclose(al.reconstruction_error(x, y, 'l2'), [[[[0.09, 0.25]]]], rtol=1e-5)
  with pytest.raises(ValueError, match=r"'huber' is not supported; allowed: \['l1', 'l2'\]"):
    al.reconstruction_error(x, y, 'huber')


def test_hinge_and_generator_losses_equal_their_sums():
  rng = np.random.default_rng(2)
  real, fake = rng.normal(size=(2, 3, 3, 1)), rng.normal(size=(2, 3, 3, 1))
  expected = 0.5 * (sum(max(0.0, 1 - r) for r in real.ravel()) / real.size +
                    sum(max(0.0, 1 + f) for f in fake.ravel()) / fake.size)
  np.testing.assert_allclose(al.hinge_discriminator_loss(real, fake), expected, rtol=1e-6)
  np.testing.assert_allclose(al.generator_adversarial_loss(fake), -fake.mean(), rtol=1e-6)


def test_adaptive_weight_balances_the_gradients_at_a_linear_last_layer():
  # Last layer y = W h; nll = |y - target|^2 and L_G = -mean(a . y) over the batch, so
  # d nll / dW = 2 sum_b (W h_b - t_b) h_b^T and d L_G / dW = -(1/B) sum_b a h_b^T.
  rng = np.random.default_rng(3)
  w, h = rng.normal(size=(3, 4)), rng.normal(size=(5, 4))
  target, a = rng.normal(size=(5, 3)), rng.normal(size=3)
  nll_gradient = jax.grad(lambda w: jnp.sum((h @ w.T - target) ** 2))(w)
  adversarial_gradient = jax.grad(lambda w: -jnp.mean((h @ w.T) @ a))(w)
  by_hand_nll = 2 * (h @ w.T - target).T @ h
  by_hand_adversarial = -np.outer(a, h.sum(0)) / 5
  expected = 0.5 * np.linalg.norm(by_hand_nll) / (np.linalg.norm(by_hand_adversarial) + 1e-4)
  np.testing.assert_allclose(al.adaptive_weight(nll_gradient, adversarial_gradient, 0.5),
                             expected, rtol=1e-5)
  # a vanishing adversarial gradient is clipped at 1e4 x weight
  np.testing.assert_allclose(al.adaptive_weight(nll_gradient, 0.0 * w, 0.5), 0.5e4, rtol=1e-6)
  # and the weight passes no gradient back
  assert float(jax.grad(lambda g: al.adaptive_weight(g, adversarial_gradient, 0.5))(
      nll_gradient).sum()) == 0.0


def test_discriminator_starts_at_its_step():
  np.testing.assert_array_equal(al.discriminator_factor(jnp.array([0, 99, 100, 5000]), 100),
                                [0.0, 0.0, 1.0, 1.0])


def test_patch_discriminator_sees_70_pixel_patches(monkeypatch):
  discriminator = patch_gan.PatchDiscriminator(channels=8, layers=3)
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 96, 96, 3))
  params = discriminator.init(jax.random.PRNGKey(1), images)
  assert discriminator.apply(params, images).shape == (2, 10, 10, 1)  # 96 / 8 = 12, then 11, 10
  # With the batch statistics held fixed (they tie every pixel of the batch together), the
  # input pixels one logit depends on form a 70 x 70 square: pix2pix's receptive field.
  moments = patch_gan.batch_moments
  monkeypatch.setattr(patch_gan, 'batch_moments', lambda x: jax.lax.stop_gradient(moments(x)))
  gradient = jax.grad(lambda x: discriminator.apply(params, x)[0, 5, 5, 0])(images)
  rows, cols = np.nonzero(np.abs(np.asarray(gradient[0])).sum(-1) > 0)
  assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (70, 70)
  assert not np.any(np.asarray(gradient[1]))


def test_batch_standardisation_uses_the_batch_statistics_per_channel():
  x = jax.random.normal(jax.random.PRNGKey(2), (3, 4, 4, 5)) * 3 + 1
  norm = patch_gan.BatchStandardise()
  out = norm.apply(norm.init(jax.random.PRNGKey(0), x), x)
  xs = np.asarray(x, np.float64)
  expected = (xs - xs.mean((0, 1, 2))) / np.sqrt(xs.var((0, 1, 2)) + 1e-5)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
