"""A Gaussian mixture whose perturbed marginals, scores and class posteriors are closed-form.

For data p_0 = sum_k w_k N(mu_k, Sigma_k) and a perturbation kernel x(t) = m(t) x(0) + s(t) z
(`sde.marginal_prob`), every marginal is again a mixture (paper, Sec. 3.1 with a Gaussian
kernel):

  p_t = sum_k w_k N(m mu_k, m^2 Sigma_k + s^2 I).

So log p_t, the exact score grad log p_t, the component posterior p_t(k | x), the posterior mean
E[x(0) | x(t)] and the flow's velocity (score_sde.flows) are available for every SDE and time.
Plugged into the samplers, the ODE and the likelihood in place of a network, they give reference
answers (the oracle tests) and make notebook experiments exact.

Arrays: x has shape (B, ...) and is flattened to (B, d); t has shape (B,). Log-densities are
in nats.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from score_sde import flows
from score_sde.sde import expand_to


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianMixture:
  """weights (K,) summing to 1, means (K, d), covariances (K, d, d) symmetric positive
  definite."""

  weights: np.ndarray
  means: np.ndarray
  covs: np.ndarray

  def __post_init__(self):
    weights, means, covs = (np.asarray(a, np.float64)
                            for a in (self.weights, self.means, self.covs))
    num, dim = means.shape
    if weights.shape != (num,) or covs.shape != (num, dim, dim):
      raise ValueError(f'Shapes weights {weights.shape}, means {means.shape}, covs {covs.shape} '
                       'must be (K,), (K, d), (K, d, d).')
    if np.any(weights < 0) or not np.isclose(weights.sum(), 1.0):
      raise ValueError(f'weights {weights} must be non-negative and sum to 1.')
    eigvals, eigvecs = np.linalg.eigh(covs)
    if np.any(eigvals <= 0):
      raise ValueError('Every covariance must be positive definite.')
    for name, value in (('weights', weights), ('means', means), ('covs', covs),
                        ('_eigvals', eigvals), ('_eigvecs', eigvecs)):
      object.__setattr__(self, name, value)

  @property
  def dim(self) -> int:
    return self.means.shape[1]

  def _kernel(self, sde, t):
    """Mean scale m(t) and std s(t) of the perturbation kernel, each shape (B,)."""
    return flows.kernel(sde, t)

  def _rotated(self, x, m, s):
    """The eigenvalues m^2 lambda + s^2 of each component's covariance m^2 Sigma_k + s^2 I and
    x - m mu_k in its eigenbasis, each (B, K, d), for kernel parameters m, s of shape (B,)."""
    flat = x.reshape(x.shape[0], -1)
    eigvals = m[:, None, None]**2 * self._eigvals + s[:, None, None]**2
    centered = flat[:, None, :] - m[:, None, None] * self.means
    return eigvals, jnp.einsum('bkd,kde->bke', centered, self._eigvecs)

  def _components(self, x, m, s):
    """Per-component log w_k + log N(x; m mu_k, m^2 Sigma_k + s^2 I), shape (B, K), and scores,
    shape (B, K, d), for kernel parameters m, s of shape (B,)."""
    eigvals, rotated = self._rotated(x, m, s)
    quad = jnp.sum(rotated**2 / eigvals, axis=-1)
    log_det = jnp.sum(jnp.log(eigvals), axis=-1)
    log_probs = jnp.log(self.weights) - 0.5 * (quad + log_det + self.dim * np.log(2 * np.pi))
    return log_probs, -jnp.einsum('kde,bke->bkd', self._eigvecs, rotated / eigvals)

  def component_log_probs(self, x, t, sde):
    """log w_k + log N(x; m mu_k, m^2 Sigma_k + s^2 I) = log p_t(x, k): shape (B, K)."""
    return self._components(x, *self._kernel(sde, t))[0]

  def log_prob(self, x, t, sde):
    """log p_t(x), shape (B,)."""
    return jax.nn.logsumexp(self.component_log_probs(x, t, sde), axis=-1)

  def score(self, x, t, sde):
    """grad_x log p_t(x), shape of x: the posterior-weighted component scores."""
    log_probs, scores = self._components(x, *self._kernel(sde, t))
    posterior = jax.nn.softmax(log_probs, axis=-1)
    return jnp.einsum('bk,bkd->bd', posterior, scores).reshape(x.shape)

  def posterior_mean(self, x, t, sde):
    """E[x(0) | x(t) = x], shape of x: the components' Gaussian posterior means
    mu_k + m Sigma_k (m^2 Sigma_k + s^2 I)^{-1} (x - m mu_k) weighted by p_t(k | x); exact also at
    m = 0 (the data mean)."""
    m, s = self._kernel(sde, t)
    eigvals, rotated = self._rotated(x, m, s)
    shrunk = m[:, None, None] * self._eigvals * rotated / eigvals  # m Lambda (m^2 Lambda + s^2)^-1
    means = self.means + jnp.einsum('kde,bke->bkd', self._eigvecs, shrunk)
    posterior = jax.nn.softmax(self._components(x, m, s)[0], axis=-1)
    return jnp.einsum('bk,bkd->bd', posterior, means).reshape(x.shape)

  def velocity_fn(self, sde):
    """The exact velocity v(x, t) = alpha' E[x(0) | x] + sigma' E[z | x] of the probability flow
    of `sde` (score_sde.flows), E[z | x] = -sigma grad log p_t(x): exact at every t, also at t = T
    of the rectified flow, where alpha = 0. Wrap it with flows.velocity_score_fn for the samplers
    and the likelihood."""

    def velocity(x, t):
      (_, sigma), (d_alpha, d_sigma) = flows.kernel_derivatives(sde, t)
      noise = -expand_to(sigma, x) * self.score(x, t, sde)
      return expand_to(d_alpha, x) * self.posterior_mean(x, t, sde) + expand_to(d_sigma, x) * noise

    return velocity

  def data_log_prob(self, x):
    """log p_0(x) of the mixture itself (no perturbation), shape (B,)."""
    ones = jnp.ones(x.shape[0])
    return jax.nn.logsumexp(self._components(x, ones, 0.0 * ones)[0], axis=-1)

  def classify(self, x):
    """The most probable component of each point under p_0, shape (B,) int."""
    ones = jnp.ones(x.shape[0])
    return jnp.argmax(self._components(x, ones, 0.0 * ones)[0], axis=-1)

  def score_fn(self, sde):
    """The exact score as a `score_fn(x, t)` for the samplers and the likelihood."""
    return lambda x, t: self.score(x, t, sde)

  def class_score_fn(self, sde):
    """Exact class-conditional scores with the components as classes, for classifier-free
    guidance: score_fn(x, t, class_labels) with class_labels (B,) int; label k < K gives
    grad log p_t(x | k), label K (the null label) the unconditional grad log p_t(x)."""

    def score_fn(x, t, class_labels):
      log_probs, scores = self._components(x, *self._kernel(sde, t))
      num = len(self.weights)
      weights = jnp.where((class_labels == num)[:, None], jax.nn.softmax(log_probs, axis=-1),
                          jax.nn.one_hot(class_labels, num))
      return jnp.einsum('bk,bkd->bd', weights, scores).reshape(x.shape)

    return score_fn

  def logit_fn(self, sde):
    """Exact noise-conditional classifier logits(x, t) = log p_t(k, x), shape (B, K), for
    class-conditional sampling with the components as classes."""
    return lambda x, t: self.component_log_probs(x, t, sde)

  def at_time(self, sde, t: float) -> 'GaussianMixture':
    """The marginal p_t as a mixture (t a Python float)."""
    m, s = (float(v[0]) for v in self._kernel(sde, jnp.full((1,), t)))
    return GaussianMixture(self.weights, m * self.means,
                           m**2 * self.covs + s**2 * np.eye(self.dim))

  def component(self, k: int) -> 'GaussianMixture':
    """Component k alone, as a one-component mixture."""
    return GaussianMixture(np.ones(1), self.means[k:k + 1], self.covs[k:k + 1])

  def sample(self, key, n: int):
    """n exact samples (n, d) float32 and their component labels (n,)."""
    key_label, key_noise = jax.random.split(key)
    labels = jax.random.choice(key_label, len(self.weights), (n,), p=jnp.asarray(self.weights))
    chol = jnp.asarray(np.linalg.cholesky(self.covs), jnp.float32)
    noise = jax.random.normal(key_noise, (n, self.dim))
    samples = jnp.asarray(self.means, jnp.float32)[labels] + jnp.einsum(
        'nde,ne->nd', chol[labels], noise)
    return samples, labels

  def sliced_wasserstein(self, samples, num_projections: int = 64, seed: int = 0,
                         grid_size: int = 20_000) -> float:
    """Sliced 1-Wasserstein distance between the empirical law of `samples` (n, d) and this
    mixture: the mean over random unit directions u of W1 = int |F_n(x) - F(x)| dx between the
    samples' projections and the exact 1-D mixture sum_k w_k N(u.mu_k, u' Sigma_k u) (integrated
    on a grid). Its floor for exact samples shrinks as n^(-1/2)."""
    from scipy import special  # a numpy-side metric; scipy comes with the install
    samples = np.asarray(samples, np.float64).reshape(len(samples), -1)
    directions = np.random.default_rng(seed).normal(size=(num_projections, self.dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    distances = []
    for u in directions:
      projected = np.sort(samples @ u)
      means = self.means @ u
      stds = np.sqrt(np.einsum('d,kde,e->k', u, self.covs, u))
      low = min(projected[0], np.min(means - 10 * stds))
      high = max(projected[-1], np.max(means + 10 * stds))
      x = np.linspace(low, high, grid_size)
      exact = special.ndtr((x[:, None] - means) / stds) @ self.weights
      empirical = np.searchsorted(projected, x, side='right') / len(projected)
      gap = np.abs(empirical - exact)
      distances.append(np.sum(0.5 * (gap[1:] + gap[:-1]) * np.diff(x)))
    return float(np.mean(distances))

  def conditional(self, known: np.ndarray, values: np.ndarray) -> 'GaussianMixture':
    """The exact law of the unknown coordinates given x[known] = values: a mixture over the
    remaining coordinates with reweighted components (Gaussian conditioning per component).
    `known` is a boolean mask (d,); `values` has shape (number of known coordinates,)."""
    known = np.asarray(known, bool)
    values = np.asarray(values, np.float64)
    unknown = ~known
    log_weights, means, covs = [], [], []
    for w, mu, cov in zip(self.weights, self.means, self.covs):
      cov_kk = cov[np.ix_(known, known)]
      cov_uk = cov[np.ix_(unknown, known)]
      gain = np.linalg.solve(cov_kk, cov_uk.T).T
      diff = values - mu[known]
      _, log_det = np.linalg.slogdet(2 * np.pi * cov_kk)
      log_weights.append(np.log(w) - 0.5 * (diff @ np.linalg.solve(cov_kk, diff) + log_det))
      means.append(mu[unknown] + gain @ diff)
      covs.append(cov[np.ix_(unknown, unknown)] - gain @ cov_uk.T)
    log_weights = np.array(log_weights)
    weights = np.exp(log_weights - log_weights.max())
    return GaussianMixture(weights / weights.sum(), np.array(means), np.array(covs))


def example_mixture(dim: int = 2, seed: int = 0) -> GaussianMixture:
  """Three well-separated anisotropic components with weights 0.5, 0.3, 0.2 in R^dim, mean 0 (the
  oracle of the tests, the sampler benchmark and the notebooks).

  The ODE samplers start from the prior, not p_T, and carry any mismatch to the end
  deterministically; a zero mean and VE's sigma_max = 50 (the paper's CIFAR-10 value, >> the
  data's spread) keep that mismatch below sampling error.
  """
  rng = np.random.default_rng(seed)
  weights = np.array([0.5, 0.3, 0.2])
  means = rng.normal(size=(3, dim))
  means *= 3.0 * np.sqrt(min(dim, 2)) / np.linalg.norm(means, axis=1, keepdims=True)
  means -= weights @ means
  factors = rng.normal(size=(3, dim, dim)) * 0.25 / np.sqrt(dim)
  covs = factors @ factors.transpose(0, 2, 1) + 0.1 * np.eye(dim)
  return GaussianMixture(weights, means, covs)
