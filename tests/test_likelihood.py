"""Likelihood through the probability-flow ODE, against the closed-form log-density of a Gaussian
mixture. With the prior in place of p_T the ODE returns
  log p_eps(x) - log p_T(z) + log prior(z)
(z the ODE's end point), so that is the reference; the mixture gives p_eps and p_T exactly."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import special

from score_sde import likelihood, models
from score_sde import sampling
from score_sde import sde as sde_lib
from score_sde.gaussian_mixture import GaussianMixture
from tests import helpers, oracle

EPS = 1e-5


def reference_logp(gmm, sde, x, z):
  n = x.shape[0]
  return (gmm.log_prob(x, jnp.full(n, EPS), sde) - gmm.at_time(sde, 1.0).data_log_prob(z) +
          sde.prior_logp(z))


@functools.lru_cache(maxsize=None)
def log_likelihood(name, divergence, num_probes=1):
  sde = oracle.SDES[name]
  fn = likelihood.get_log_likelihood_fn(sde, divergence=divergence, num_probes=num_probes, eps=EPS)
  return jax.jit(lambda key, x, gmm: fn(key, gmm.score_fn(sde), x), static_argnums=2)


@pytest.mark.parametrize('dim', [2, 16])
@pytest.mark.parametrize('name', oracle.SDES)
def test_exact_divergence_matches_the_closed_form(name, dim):
  gmm = oracle.mixture(dim)
  x, _ = gmm.sample(jax.random.PRNGKey(dim), 16)
  logp, z, nfe = log_likelihood(name, 'exact')(jax.random.PRNGKey(0), x, gmm)
  error_per_dim = np.abs(logp - reference_logp(gmm, oracle.SDES[name], x, z)) / dim
  assert error_per_dim.max() < 1e-3, error_per_dim
  assert nfe.shape == (16,) and np.all(nfe > 20)


@pytest.mark.parametrize('divergence', ['hutchinson_rademacher', 'hutchinson_gaussian'])
def test_hutchinson_is_unbiased_and_averages_its_probes(divergence):
  gmm, repeats = oracle.mixture(4), 256
  x, _ = gmm.sample(jax.random.PRNGKey(3), 1)
  batch = jnp.tile(x, (repeats, 1))  # every row draws its own probes
  exact, _, _ = log_likelihood('vp', 'exact')(jax.random.PRNGKey(0), x, gmm)
  one, _, _ = log_likelihood('vp', divergence)(jax.random.PRNGKey(1), batch, gmm)
  four, _, _ = log_likelihood('vp', divergence, 4)(jax.random.PRNGKey(2), batch, gmm)
  for estimates in (one, four):
    standard_error = np.std(estimates) / np.sqrt(repeats)
    assert abs(np.mean(estimates) - exact[0]) < 3 * standard_error
  assert 0.15 < np.var(four) / np.var(one) < 0.45  # four probes: a quarter of the variance


def test_a_sample_does_not_depend_on_its_batch():
  gmm, sde = oracle.mixture(2), oracle.SDES['ve']
  bpd_fn = jax.jit(lambda key, x: likelihood.get_bpd_fn(
      sde, dequantization='none', eps=EPS)(key, gmm.score_fn(sde), x))
  x, _ = gmm.sample(jax.random.PRNGKey(5), 8)
  other_mates = x.at[3:].set(gmm.sample(jax.random.PRNGKey(6), 5)[0])
  full, _, _ = bpd_fn(jax.random.PRNGKey(0), x)
  mixed, _, _ = bpd_fn(jax.random.PRNGKey(0), other_mates)
  np.testing.assert_allclose(full[:3], mixed[:3], atol=1e-6)
  # A smaller batch compiles to a different program: equal up to float32 rounding.
  head, _, _ = bpd_fn(jax.random.PRNGKey(0), x[:3])
  np.testing.assert_allclose(full[:3], head, atol=1e-5)


@pytest.mark.parametrize('centered', [True, False])
def test_bits_per_dim_of_images_is_the_discrete_likelihood(centered):
  """For 8-bit images the bpd (dequantized, +7 or +8 offset) must equal -log2 P(x) / d, P the
  probability of the pixel bin under the model, here a smooth Gaussian whose bin integrals are
  products of normal CDF differences (a Gaussian with diagonal covariance, so per pixel)."""
  shape, sde = (2, 2, 1), sde_lib.VPSDE()
  scaler = (lambda u: 2.0 * u - 1.0) if centered else (lambda u: u)
  scale = 2.0 if centered else 1.0
  rng = np.random.default_rng(0)
  mean_y, std_y = rng.uniform(-0.2, 0.2, 4) * scale, rng.uniform(0.2, 0.4, 4) * scale
  gmm = GaussianMixture(np.ones(1), mean_y[None], np.diag(std_y**2)[None])
  pixels = np.array([[100, 140, 90, 128], [120, 131, 97, 150]])
  images = jnp.asarray(pixels / 255.0, jnp.float32).reshape(2, *shape)
  repeats = 128
  bpd_fn = likelihood.get_bpd_fn(sde, data_scaler=scaler, dequantization='uniform',
                                 divergence='exact', eps=EPS)
  bpd, z, _ = jax.jit(lambda key, x: bpd_fn(key, gmm.score_fn(sde), x))(
      jax.random.PRNGKey(0), jnp.repeat(images, repeats, axis=0))
  # The ODE's prior-for-p_T substitution shifts log p by log prior(z) - log p_T(z).
  prior_shift = sde.prior_logp(z) - gmm.at_time(sde, 1.0).data_log_prob(z.reshape(len(z), -1))
  bpd = bpd + np.asarray(prior_shift) / (4 * np.log(2))
  # The model density is p_eps in y space; the bin of pixel v is u in [v/256, (v+1)/256).
  density = gmm.at_time(sde, EPS)
  std_eps = np.sqrt(np.diag(density.covs[0]))
  low = (scaler(pixels / 256.0) - density.means[0]) / std_eps
  high = (scaler((pixels + 1) / 256.0) - density.means[0]) / std_eps
  log2_prob = np.log2(special.ndtr(high) - special.ndtr(low)).sum(-1)
  expected = -log2_prob / 4
  # Dequantization gives a variational bound, tight here: the density is near flat in a bin.
  estimate = bpd.reshape(2, repeats)
  standard_error = estimate.std(1) / np.sqrt(repeats)
  assert np.all(np.abs(estimate.mean(1) - expected) < 3 * standard_error + 2e-4), (
      estimate.mean(1), expected, standard_error)


def test_bits_per_dim_of_continuous_data_has_no_offset():
  sde, gmm = oracle.SDES['vp'], oracle.mixture(2)
  x, _ = gmm.sample(jax.random.PRNGKey(0), 4)
  bpd, z, _ = likelihood.get_bpd_fn(sde, dequantization='none', divergence='exact', eps=EPS)(
      jax.random.PRNGKey(1), gmm.score_fn(sde), x)
  np.testing.assert_allclose(bpd, -reference_logp(gmm, sde, x, z) / (2 * np.log(2)), atol=2e-3)


def test_bad_likelihood_settings_are_refused():
  sde = oracle.SDES['vp']
  with pytest.raises(ValueError, match=r"Unknown divergence 'hutch'; allowed: \['hutchinson_"):
    likelihood.get_log_likelihood_fn(sde, divergence='hutch')
  with pytest.raises(ValueError, match='num_probes = 0 must be an integer >= 1'):
    likelihood.get_log_likelihood_fn(sde, num_probes=0)
  with pytest.raises(ValueError, match=r"Unknown dequantization 'gaussian'"):
    likelihood.get_bpd_fn(sde, dequantization='gaussian')
  bpd_fn = likelihood.get_bpd_fn(sde, dequantization='uniform')
  with pytest.raises(ValueError, match=r'must lie in \[0, 1\].*got values in \[-1.0, 1.0\]'):
    bpd_fn(jax.random.PRNGKey(0), lambda x, t: -x, jnp.linspace(-1.0, 1.0, 8).reshape(2, 4))


def test_model_bpd_honours_discrete_training():
  """A discretely trained VE model is conditioned on step indices; its likelihood must use
  them (the official likelihood always uses continuous labels)."""
  config = helpers.tiny_config('vesde')
  config.training.continuous = False
  config.model.embedding_type = 'positional'
  config.likelihood = ml_collections.ConfigDict(dict(
      solver='dopri5', rtol=1e-4, atol=1e-4, num_steps=10, divergence='exact', num_probes=1,
      eps=1e-5))
  config.data.dequantization = 'none'
  sde = sde_lib.get_sde(config)
  model, variables = models.init_model(jax.random.PRNGKey(0), config, (2,))
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 2))
  bpd, _, _ = likelihood.get_model_bpd_fn(config, sde, model)(variables, jax.random.PRNGKey(2), x)
  for continuous, should_match in ((False, True), (True, False)):
    score_fn = models.get_score_fn(sde, model, variables, train=False, continuous=continuous)
    direct, _, _ = likelihood.get_bpd_fn(
        sde, dequantization='none', solver=sampling.ODESolver(rtol=1e-4, atol=1e-4),
        divergence='exact', eps=1e-5, continuous=continuous)(jax.random.PRNGKey(2), score_fn, x)
    assert np.allclose(bpd, direct, atol=1e-5) == should_match
