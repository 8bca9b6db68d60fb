"""The terms of the KL autoencoder's training objective (Rombach et al. 2022, Sec. 3 and App. G;
Esser et al. 2021, Eq. 5-7; taming-transformers' LPIPSWithDiscriminator), as pure functions of
arrays. Images are NHWC; per-sample terms have shape (B,).

The autoencoder's objective is

  nll + kl_weight * KL(q(z | x) || N(0, I)) + factor(step) * lambda * L_G,

with nll the reconstruction error under a Laplace (l1) or Gaussian (l2) likelihood of one
learned log-scale; L_G = -E[D(x_rec)] the generator's adversarial loss; lambda the adaptive
weight, which balances the two terms' gradients at the decoder's last layer; and factor(step)
0 before the discriminator starts, 1 after. The discriminator D minimises the hinge loss,
also scaled by factor(step).
"""
import jax
import jax.numpy as jnp

RECONSTRUCTION_LOSSES = ('l1', 'l2')
# Bounds of the adaptive weight and the floor under its denominator (Esser et al. 2021, Eq. 7;
# taming-transformers' calculate_adaptive_weight).
ADAPTIVE_WEIGHT_MAX = 1e4
ADAPTIVE_WEIGHT_DELTA = 1e-4


def reconstruction_error(images, reconstructions, kind: str):
  """|x - x_rec| ('l1') or (x - x_rec)^2 ('l2') per pixel and channel, shaped like images."""
  if kind not in RECONSTRUCTION_LOSSES:
    raise ValueError(f'reconstruction loss {kind!r} is not supported; allowed: '
                     f'{list(RECONSTRUCTION_LOSSES)}.')
  difference = jnp.asarray(images, jnp.float32) - reconstructions
  return jnp.abs(difference) if kind == 'l1' else difference**2


def negative_log_likelihood(error, log_scale):
  """sum over pixels of error / exp(log_scale) + log_scale, per sample (B,): the reconstruction
  error as a likelihood with one learned scalar log-scale (LDM's `logvar`, initialised to 0,
  where it equals the summed error)."""
  per_pixel = error / jnp.exp(log_scale) + log_scale
  return jnp.sum(per_pixel.reshape(per_pixel.shape[0], -1), axis=1)


def gaussian_kl(mean, std):
  """KL(N(mean, diag(std^2)) || N(0, I)) = 1/2 sum(mean^2 + std^2 - 1 - log std^2), in nats,
  per sample (B,): the posterior's KL term; mean and std (B, ...) as AutoencoderKL.encode gives
  them."""
  per_dim = mean**2 + std**2 - 1.0 - 2.0 * jnp.log(std)
  return 0.5 * jnp.sum(per_dim.reshape(per_dim.shape[0], -1), axis=1)


def hinge_discriminator_loss(real_logits, fake_logits):
  """1/2 (E[relu(1 - D(x))] + E[relu(1 + D(x_rec))]), the means over every patch logit
  (Lim & Ye 2017; taming-transformers' hinge_d_loss); a scalar."""
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - real_logits)) +
                jnp.mean(jax.nn.relu(1.0 + fake_logits)))


def generator_adversarial_loss(fake_logits):
  """L_G = -E[D(x_rec)] over every patch logit; a scalar."""
  return -jnp.mean(fake_logits)


def adaptive_weight(nll_gradient, adversarial_gradient, weight: float):
  """lambda = weight * clip(|grad nll| / (|grad L_G| + 1e-4), 0, 1e4) (Esser et al. 2021, Eq. 7):
  the gradients are those of the two terms with respect to the decoder's last layer (any
  array shape, Frobenius norms). Returned without gradient, as a scalar."""
  ratio = jnp.linalg.norm(jnp.ravel(nll_gradient)) / (
      jnp.linalg.norm(jnp.ravel(adversarial_gradient)) + ADAPTIVE_WEIGHT_DELTA)
  return jax.lax.stop_gradient(weight * jnp.clip(ratio, 0.0, ADAPTIVE_WEIGHT_MAX))


def discriminator_factor(step, start: int):
  """1.0 from training step `start` on, 0.0 before: the adversarial terms are off while the
  autoencoder first learns to reconstruct (LDM's disc_start)."""
  return jnp.where(step >= start, 1.0, 0.0)
