"""The PC sampler with the exact score of a Gaussian: samples must match the data law."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import sampling
from score_sde import sde as sde_lib

MEAN = np.array([1.0, -0.5], np.float32)
COV = np.array([[1.0, 0.6], [0.6, 0.5]], np.float32)
SDES = {'vp': sde_lib.VPSDE(N=500), 'subvp': sde_lib.subVPSDE(N=500),
        've': sde_lib.VESDE(sigma_min=0.01, sigma_max=20.0, N=500)}
EPS = {'vp': 1e-3, 'subvp': 1e-3, 've': 1e-5}


def gaussian_score(sde):
  """Exact score of p_t = N(m MEAN, m^2 COV + std^2 I) for data N(MEAN, COV)."""

  def score_fn(x, t):
    m = sde.marginal_prob(jnp.ones((1,)), t)[0]
    std = sde.marginal_prob(x, t)[1]
    cov_t = m[:, None, None]**2 * COV + std[:, None, None]**2 * jnp.eye(2)
    return -jnp.linalg.solve(cov_t, (x - m[:, None] * MEAN)[..., None])[..., 0]

  return score_fn


@functools.lru_cache(maxsize=None)
def draw(name, predictor, corrector, snr=0.16, n=4000, first_index=0, step_size_rule='batch'):
  sde = SDES[name]
  sampler = sampling.get_pc_sampler(sde, predictor, corrector, snr=snr, eps=EPS[name],
                                    step_size_rule=step_size_rule)
  run = jax.jit(lambda key: sampler(key, gaussian_score(sde), (n, 2), first_index))
  samples, nfe = run(jax.random.PRNGKey(0))
  return np.asarray(samples), nfe


def assert_gaussian_matches(samples, mean_tol=0.06, cov_tol=0.08):
  # n = 4000: the standard error of the mean is <= 0.016 and of a covariance entry <= 0.025.
  np.testing.assert_allclose(samples.mean(0), MEAN, atol=mean_tol)
  np.testing.assert_allclose(np.cov(samples.T), COV, atol=cov_tol)


@pytest.mark.parametrize('name', SDES)
@pytest.mark.parametrize('predictor', ['reverse_diffusion', 'euler_maruyama'])
def test_predictor_only_matches_gaussian(name, predictor):
  samples, nfe = draw(name, predictor, 'none')
  assert nfe == 500
  assert_gaussian_matches(samples)


@pytest.mark.parametrize('name', SDES)
def test_predictor_corrector_matches_gaussian(name):
  samples, nfe = draw(name, 'reverse_diffusion', 'langevin', step_size_rule='batch')
  assert nfe == 500 + 499
  assert_gaussian_matches(samples)


def test_per_sample_langevin_bias_in_2d_shrinks_with_snr():
  """In 2-D the per-sample step size 2 alpha (snr |z| / |s(x)|)^2 is heavy-tailed (|s| vanishes
  at the mode) and inflates the variance; the inflation must vanish as snr -> 0."""
  errors = [np.abs(np.cov(draw('ve', 'reverse_diffusion', 'langevin', snr=snr,
                              step_size_rule='per_sample')[0].T) - COV).max()
            for snr in (0.16, 0.05, 0.01)]
  assert errors[0] > errors[1] > errors[2], errors
  assert errors[2] < 0.1 * errors[0], errors


def test_corrector_only_sampling_works_for_subvp():
  # The official implementation crashes here (its subVP SDE has no alphas).
  samples, nfe = draw('subvp', 'none', 'langevin', n=1000, step_size_rule='batch')
  assert nfe == 499
  assert_gaussian_matches(samples, mean_tol=0.15, cov_tol=0.15)


@pytest.mark.parametrize('step_size_rule', ['per_sample', 'batch'])
def test_sample_k_is_independent_of_batch(step_size_rule):
  full, _ = draw('vp', 'euler_maruyama', 'langevin', n=8, step_size_rule=step_size_rule)
  tail, _ = draw('vp', 'euler_maruyama', 'langevin', n=4, first_index=4,
                 step_size_rule=step_size_rule)
  if step_size_rule == 'per_sample':
    np.testing.assert_allclose(full[4:], tail, rtol=1e-5, atol=1e-5)
  else:  # the official batch-averaged step size couples a sample to its batch-mates
    assert not np.allclose(full[4:], tail, rtol=1e-5, atol=1e-5)


def test_sampler_is_one_loop_whatever_the_number_of_steps():
  """No Python loop over time steps: the traced program has the same size for N = 20 and 200."""

  def size(n):
    sampler = sampling.get_pc_sampler(sde_lib.VPSDE(N=n), 'reverse_diffusion', 'langevin')
    jaxpr = jax.make_jaxpr(lambda key: sampler(key, gaussian_score(sde_lib.VPSDE(N=n)), (3, 2)))
    return len(jaxpr(jax.random.PRNGKey(0)).jaxpr.eqns)

  assert size(20) == size(200)


@pytest.mark.parametrize('kwargs,message', [
    (dict(predictor='heun'), r"Unknown predictor 'heun'; allowed: \['ancestral_sampling', "
                             r"'euler_maruyama', 'none', 'reverse_diffusion'\]"),
    (dict(corrector='mala'), r"Unknown corrector 'mala'; allowed: \['ald', 'langevin', 'none'\]"),
    (dict(predictor='ancestral_sampling', probability_flow=True),
     'ancestral_sampling has no probability-flow form'),
    (dict(n_steps_each=0), 'n_steps_each = 0 must be a positive integer'),
    (dict(eps=0.0), r'eps = 0.0 must lie in \(0, T = 1.0\)'),
    (dict(step_size_rule='mean'), "Unknown Langevin step-size rule 'mean'"),
    (dict(sde=sde_lib.VPSDE(N=10)), r'discrete betas up to 2 > 1 \(beta_max / N\)'),
])
def test_bad_sampler_arguments_are_refused(kwargs, message):
  with pytest.raises(ValueError, match=message):
    sampling.get_pc_sampler(kwargs.pop('sde', SDES['vp']), **kwargs)
