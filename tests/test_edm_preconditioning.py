"""EDM preconditioning (score_sde.edm) against independent references: the wrapper's algebra
(an exact denoiser passed through F = (D - c_skip x) / c_out comes back unchanged), the
denoiser's score on VP / sub-VP / VE (equal to the mixture's closed-form score), and the loss
(equal to lambda(sigma) |D - y|^2 computed from the paper's formula)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import edm
from score_sde import sde as sde_lib
from score_sde.sde import expand_to
from tests import oracle

GMM = oracle.mixture(2)
VE_KERNEL = sde_lib.VESDE(sigma_min=1e-3, sigma_max=100.0)  # marginal std sigma(t) = sigma


def exact_denoiser(x, sigma):
  """E[x0 | x0 + sigma n = x] = x + sigma^2 grad log p_sigma(x) (Tweedie), for the mixture."""
  t = jnp.log(sigma / VE_KERNEL.sigma_min) / jnp.log(VE_KERNEL.sigma_max / VE_KERNEL.sigma_min)
  return x + expand_to(sigma**2, x) * GMM.score(x, t, VE_KERNEL)


def ideal_network(precond):
  """The F whose preconditioned output is the exact denoiser."""

  def network_fn(x_in, noise_input):
    sigma = noise_input if precond.log_embedding else jnp.exp(4.0 * noise_input)
    c_skip, c_out, c_in, _ = precond.coefficients(sigma)
    x = x_in / expand_to(c_in, x_in)
    return (exact_denoiser(x, sigma) - expand_to(c_skip, x) * x) / expand_to(c_out, x)

  return network_fn


POINTS = jax.random.normal(jax.random.PRNGKey(0), (256, 2)) * 3.0


@pytest.mark.parametrize('log_embedding', [False, True])
def test_wrapper_returns_the_denoiser(log_embedding):
  precond = edm.EDMPreconditioning(sigma_data=0.5, log_embedding=log_embedding)
  sigma = jnp.exp(jax.random.uniform(jax.random.PRNGKey(1), (256,), minval=-3, maxval=3))
  np.testing.assert_allclose(precond.denoiser(ideal_network(precond))(POINTS, sigma),
                             exact_denoiser(POINTS, sigma), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('name', oracle.SDES)
def test_denoiser_score_is_the_sde_score(name):
  sde = oracle.SDES[name]
  precond = edm.EDMPreconditioning()
  score_fn = edm.denoiser_score_fn(precond.denoiser(ideal_network(precond)), sde)
  t = jax.random.uniform(jax.random.PRNGKey(2), (256,), minval=0.05, maxval=1.0)
  x = POINTS * expand_to(sde.marginal_prob(jnp.ones((256, 1)), t)[0][:, 0], POINTS)
  np.testing.assert_allclose(score_fn(x, t), GMM.score(x, t, sde), rtol=2e-3, atol=2e-3)


def test_loss_is_the_weighted_denoising_error():
  precond = edm.EDMPreconditioning(sigma_data=0.7, p_mean=-0.5, p_std=1.5)
  weights = jax.random.normal(jax.random.PRNGKey(3), (2, 2))
  network_fn = lambda x, noise: jnp.tanh(x @ weights) * expand_to(noise, x)  # noqa: E731
  key = jax.random.PRNGKey(4)
  x0 = POINTS[:64]
  losses = precond.loss(key, x0, network_fn, reduce_mean=True)
  # The paper's form: lambda(sigma) |D(y + n; sigma) - y|^2 with the same draws.
  sigma_key, noise_key = jax.random.split(key)
  sigma = jnp.exp(-0.5 + 1.5 * jax.random.normal(sigma_key, (64,)))
  noisy = x0 + expand_to(sigma, x0) * jax.random.normal(noise_key, x0.shape)
  denoised = precond.denoiser(network_fn)(noisy, sigma)
  weight = (sigma**2 + 0.7**2) / (sigma * 0.7)**2
  np.testing.assert_allclose(losses, weight * jnp.mean(jnp.square(denoised - x0), -1),
                             rtol=1e-4)


def test_bad_parameters_are_refused():
  with pytest.raises(ValueError, match='sigma_data = 0 must be positive'):
    edm.EDMPreconditioning(sigma_data=0)
