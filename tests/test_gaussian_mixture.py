"""The analytic oracle itself, against scipy densities and autodiff."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from score_sde.gaussian_mixture import GaussianMixture
from tests import oracle


@pytest.mark.parametrize('name', oracle.SDES)
def test_perturbed_density_and_score(name):
  sde, gmm = oracle.SDES[name], oracle.mixture(3)
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 3)) * 3.0
  t = jnp.array([1e-3, 0.1, 0.4, 0.7, 1.0])
  log_p = np.asarray(gmm.log_prob(x, t, sde))
  for i in range(5):  # scipy density of the mixture convolved with the kernel at t_i
    mean, std = sde.marginal_prob(jnp.ones((1, 1)), t[i:i + 1])
    m, s = float(mean[0, 0]), float(std[0])
    density = sum(w * stats.multivariate_normal(m * mu, m**2 * c + s**2 * np.eye(3)).pdf(x[i])
                  for w, mu, c in zip(gmm.weights, gmm.means, gmm.covs))
    np.testing.assert_allclose(log_p[i], np.log(density), rtol=1e-4, atol=1e-4)
  autodiff = jax.grad(lambda y: jnp.sum(gmm.log_prob(y, t, sde)))(x)
  np.testing.assert_allclose(gmm.score(x, t, sde), autodiff, rtol=1e-4, atol=1e-4)


def test_conditional_is_the_normalized_joint():
  gmm = oracle.mixture(4)
  known = np.array([True, False, True, False])
  values = np.array([0.5, -1.0])
  cond = gmm.conditional(known, values)
  unknown = jax.random.normal(jax.random.PRNGKey(1), (6, 2))
  joint = np.zeros((6, 4), np.float32)
  joint[:, known], joint[:, ~known] = values, unknown
  # log p(u | y) - log p(u, y) is the constant -log p(y) for every u.
  gap = np.asarray(cond.data_log_prob(unknown)) - np.asarray(gmm.data_log_prob(jnp.asarray(joint)))
  np.testing.assert_allclose(gap, gap[0], atol=1e-4)
  marginal = GaussianMixture(gmm.weights, gmm.means[:, known], gmm.covs[:, known][:, :, known])
  np.testing.assert_allclose(gap[0], -marginal.data_log_prob(jnp.asarray(values[None], jnp.float32)),
                             rtol=1e-4)


def test_exact_samples_pass_the_check():
  gmm = oracle.mixture(2)
  samples, _ = gmm.sample(jax.random.PRNGKey(2), 4000)
  oracle.assert_follows_mixture(samples, gmm)
  with pytest.raises(AssertionError):  # and a shifted copy fails it
    oracle.assert_follows_mixture(samples + 0.1, gmm)


def test_bad_mixtures_are_refused():
  with pytest.raises(ValueError, match='must be non-negative and sum to 1'):
    GaussianMixture(np.array([0.5, 0.6]), np.zeros((2, 1)), np.ones((2, 1, 1)))
  with pytest.raises(ValueError, match='positive definite'):
    GaussianMixture(np.array([1.0]), np.zeros((1, 2)), np.zeros((1, 2, 2)))
