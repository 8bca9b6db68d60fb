"""Shared oracle for the sampler, ODE, likelihood and controllable tests: Gaussian mixtures whose
perturbed marginals and scores are closed-form (score_sde.gaussian_mixture), the kernel of a
discrete chain, and a statistical check that samples follow a given mixture."""
import dataclasses

import jax.numpy as jnp
import numpy as np

from score_sde import sde as sde_lib
from score_sde.gaussian_mixture import GaussianMixture, example_mixture
from score_sde.sampling import grid

SDES = {'vp': sde_lib.VPSDE(), 'subvp': sde_lib.subVPSDE(),
        've': sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0)}
EPS = {'vp': 1e-3, 'subvp': 1e-3, 've': 1e-5}
Z_BOUND = 4.5  # standard errors allowed per statistic


def mixture(dim: int, seed: int = 0) -> GaussianMixture:
  """The library's example mixture (score_sde.gaussian_mixture.example_mixture)."""
  return example_mixture(dim, seed)


def separated_mixture(means, seed: int = 0) -> GaussianMixture:
  """Components at `means` (K, d), weights decreasing from 0.5, random correlated covariances of
  scale ~0.35 (so conditioning on some coordinates moves the others)."""
  means = np.asarray(means, np.float64)
  num, dim = means.shape
  rng = np.random.default_rng(seed)
  factors = rng.normal(size=(num, dim, dim)) * 0.3 / np.sqrt(dim)
  weights = 0.5 ** np.arange(1, num + 1)
  weights[-1] *= 2
  return GaussianMixture(weights, means, factors @ factors.transpose(0, 2, 1) + 0.05 * np.eye(dim))


@dataclasses.dataclass(frozen=True, kw_only=True)
class DiscreteKernel:
  """Stands in for an SDE in the mixture's marginals: the kernel of a discrete chain at the step
  of time t (what a discretely trained model learns; DDPM: sqrt(alphabar_i), sqrt(1 -
  alphabar_i))."""

  sde: sde_lib.SDE

  def marginal_prob(self, x, t):
    index = self.sde.timestep_index(t)
    nodes = grid.nodes_at(self.sde, np.arange(self.sde.N) * self.sde.T / (self.sde.N - 1),
                          continuous=False)
    alpha = jnp.asarray(nodes.alphas, jnp.float32)[index]
    sigma = jnp.asarray(nodes.sigmas, jnp.float32)[index]
    return sde_lib.expand_to(alpha, x) * x, sigma


def assert_follows_mixture(samples, gmm: GaussianMixture, z_bound: float = Z_BOUND):
  """Component frequencies, per-component means and covariances of `samples` (n, d) agree with
  `gmm` within z_bound standard errors (components assigned by their exact posterior)."""
  samples = np.asarray(samples, np.float64).reshape(len(samples), -1)
  assert np.all(np.isfinite(samples))
  n = len(samples)
  labels = np.asarray(gmm.classify(samples.astype(np.float32)))
  for k, (weight, mean, cov) in enumerate(zip(gmm.weights, gmm.means, gmm.covs)):
    members = samples[labels == k]
    frequency_se = np.sqrt(weight * (1 - weight) / n)
    frequency_error = abs(len(members) / n - weight)
    assert frequency_error <= z_bound * frequency_se + 1 / n, (k, len(members) / n, weight)
    if weight < 1e-3:
      continue
    n_k = len(members)
    variances = np.diag(cov)
    mean_z = np.abs(members.mean(0) - mean) / np.sqrt(variances / n_k)
    assert mean_z.max() < z_bound, (k, members.mean(0), mean)
    cov_se = np.sqrt((np.outer(variances, variances) + cov**2) / n_k)
    cov_z = np.abs(np.cov(members.T).reshape(cov.shape) - cov) / cov_se
    assert cov_z.max() < z_bound, (k, np.cov(members.T), cov)
