"""Consistency models' parameterisation, noise levels and distance against the papers'
formulas, written out here in numpy / scipy (Song et al. 2023, App. C; Song & Dhariwal 2023,
Eq. 7-9)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from score_sde import consistency, edm, sampling, sweep
from score_sde import sde as sde_lib
from score_sde.sampling import consistency as consistency_sampling
from score_sde.sampling import start, streams

from .helpers import tiny_config


def test_the_consistency_function_is_the_identity_at_sigma_min_exactly():
  param = consistency.ConsistencyParameterization(sigma_min=0.002, sigma_data=0.5)
  network = lambda x, noise: 10.0 + x**2 + noise[:, None]  # noqa: E731  (far from zero)
  f = param.consistency_fn(network)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
  np.testing.assert_array_equal(f(x, jnp.full(4, 0.002)), x)
  sigma = np.array([0.002, 0.5, 1.0, 80.0])
  c_skip, c_out, c_in, noise = (np.asarray(c) for c in param.coefficients(jnp.asarray(sigma)))
  np.testing.assert_allclose(c_skip, 0.25 / ((sigma - 0.002)**2 + 0.25), rtol=1e-6)
  np.testing.assert_allclose(c_out, 0.5 * (sigma - 0.002) / np.sqrt(0.25 + sigma**2), rtol=1e-6)
  np.testing.assert_allclose(c_in, 1 / np.sqrt(sigma**2 + 0.25), rtol=1e-6)  # EDM's
  np.testing.assert_allclose(noise, np.log(sigma) / 4, rtol=1e-6)
  expected = c_skip[:, None] * np.asarray(x) + c_out[:, None] * np.asarray(
      network(c_in[:, None] * np.asarray(x), noise))
  np.testing.assert_allclose(f(x, jnp.asarray(sigma)), expected, rtol=1e-5)
  with pytest.raises(ValueError, match='sigma_min = 0.0 must be positive'):
    consistency.ConsistencyParameterization(sigma_min=0.0)
  with pytest.raises(ValueError, match='sigma_data = -1.0 must be positive'):
    consistency.ConsistencyParameterization(sigma_data=-1.0)


def test_karras_levels_are_edms_equation_5():
  n, low, high, rho = 18, 0.002, 80.0, 7.0
  i = np.arange(n)
  expected = (low**(1 / rho) + i / (n - 1) * (high**(1 / rho) - low**(1 / rho)))**rho
  got = np.asarray(consistency.karras_sigma(jnp.arange(n), n, low, high, rho))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  np.testing.assert_allclose(got[[0, -1]], [low, high], rtol=1e-5)


def test_ct_curriculum_and_target_ema_are_the_papers():
  total, s0, s1, mu0 = 800_000, 2, 150, 0.9
  steps = np.array([0, 1, 1000, 100_000, 400_000, 799_999, 800_000])
  expected = np.ceil(np.sqrt(steps / total * ((s1 + 1)**2 - s0**2) + s0**2) - 1) + 1
  got = np.asarray(consistency.ct_num_levels(jnp.asarray(steps), total, s0, s1))
  np.testing.assert_array_equal(got, expected)
  assert got[0] == 2 and got[-1] == 151
  np.testing.assert_allclose(consistency.ct_target_ema_rate(jnp.asarray(got), s0, mu0),
                             np.exp(s0 * np.log(mu0) / got), rtol=1e-6)


def test_ict_curriculum_doubles_every_kprime_steps_up_to_1281():
  total, s0, s1 = 400_000, 10, 1280
  stage = math.floor(total / (math.log2(s1 // s0) + 1))  # 50,000: eight stages
  steps = np.arange(0, total + 1, 2500)
  expected = np.minimum(s0 * 2.0**(steps // stage), s1) + 1
  got = np.asarray(consistency.ict_num_levels(jnp.asarray(steps), total, s0, s1))
  np.testing.assert_array_equal(got, expected)
  assert sorted(set(got.tolist())) == [11, 21, 41, 81, 161, 321, 641, 1281]
  assert int(consistency.ict_num_levels(10**9, total)) == 1281  # no overflow far past K


def test_lognormal_pair_probabilities_are_the_lognormal_mass_between_levels():
  n, max_levels, p_mean, p_std = 41, 1281, -1.1, 2.0
  sigmas = np.asarray(consistency.karras_sigma(np.arange(n), n), np.float64)
  mass = np.diff(stats.norm.cdf(np.log(sigmas), loc=p_mean, scale=p_std))
  logits = np.asarray(consistency.lognormal_pair_logits(jnp.int32(n), max_levels))
  assert logits.shape == (max_levels - 1,) and np.all(np.isneginf(logits[n - 1:]))
  np.testing.assert_allclose(np.exp(logits[:n - 1]), mass / mass.sum(), rtol=2e-4, atol=1e-9)
  weights = consistency.ict_weight(jnp.asarray(sigmas[:-1]), jnp.asarray(sigmas[1:]))
  np.testing.assert_allclose(weights, 1 / np.diff(sigmas), rtol=1e-4)


def test_pseudo_huber_is_its_formula_between_l2_squared_and_l1():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 4, 2))
  y = x + jnp.asarray([1e-4, 1e-2, 10.0])[:, None, None, None]
  c = consistency.pseudo_huber_c(32)
  np.testing.assert_allclose(c, 0.00054 * np.sqrt(32), rtol=1e-12)
  assert abs(consistency.pseudo_huber_c(3 * 32 * 32) - 0.03) < 3e-4  # CIFAR-10's c
  norm = np.sqrt(32) * np.array([1e-4, 1e-2, 10.0])
  got = np.asarray(consistency.pseudo_huber(x, y))
  np.testing.assert_allclose(got, np.sqrt(norm**2 + c**2) - c, rtol=1e-3)
  np.testing.assert_allclose(got[0], norm[0]**2 / (2 * c), rtol=1e-2)  # small: squared / 2c
  np.testing.assert_allclose(got[2], norm[2] - c, rtol=1e-4)  # large: the L1-like norm - c


MEAN, STD, SIGMA_MIN = np.array([1.0, -2.0]), 0.5, 0.002


def exact_consistency_fn(x, sigma):
  """f of Gaussian data N(MEAN, STD^2 I): the probability-flow map from level sigma to
  SIGMA_MIN is linear, x -> MEAN + (x - MEAN) sqrt(STD^2 + SIGMA_MIN^2) / sqrt(STD^2 + sigma^2)."""
  ratio = jnp.sqrt(STD**2 + SIGMA_MIN**2) / jnp.sqrt(STD**2 + sigma**2)
  return MEAN + (x - MEAN) * ratio[:, None]


@pytest.mark.parametrize('levels', [(), (1.0,), (2.0, 0.3)])
def test_with_the_exact_consistency_function_samples_are_exact(levels):
  sde = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000)
  score_fn = edm.denoiser_score_fn(exact_consistency_fn, sde)
  sample = consistency_sampling.get_consistency_sampler(sde, levels, sigma_min=SIGMA_MIN)
  n = 20_000
  samples, nfe = jax.jit(lambda key: sample(key, score_fn, (n, 2)))(jax.random.PRNGKey(0))
  assert nfe == 1 + len(levels)
  samples = np.asarray(samples, np.float64)
  exact_std = np.sqrt(STD**2 + SIGMA_MIN**2)
  np.testing.assert_allclose(samples.mean(0), MEAN, atol=4.5 * exact_std / np.sqrt(n))
  np.testing.assert_allclose(samples.std(0), exact_std, atol=4.5 * exact_std / np.sqrt(2 * n))


def test_one_step_is_the_consistency_function_of_the_prior_draws_on_ve():
  sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=1000)
  score_fn = edm.denoiser_score_fn(exact_consistency_fn, sde)
  key = jax.random.PRNGKey(3)
  samples, nfe = consistency_sampling.get_consistency_sampler(sde, sigma_min=SIGMA_MIN)(
      key, score_fn, (8, 2), 5)
  draws = start.prior_draws(sde, streams.sample_keys(key, 5, 8), (8, 2))
  np.testing.assert_allclose(samples, exact_consistency_fn(draws, jnp.full(8, 50.0)), rtol=1e-5,
                             atol=1e-6)
  assert nfe == 1
  with pytest.raises(ValueError, match=r'levels \[0.3, 2.0\] must decrease strictly'):
    consistency_sampling.get_consistency_sampler(sde, (0.3, 2.0))
  with pytest.raises(ValueError, match=r'\(sigma_min, start level\) = \(0.002, 50\)'):
    consistency_sampling.get_consistency_sampler(sde, (60.0,))


def test_the_config_selects_the_consistency_sampler_and_refuses_bad_levels():

  config = tiny_config()
  config.sampling.update(method='consistency', consistency_levels=(1.0,),
                         consistency_sigma_min=SIGMA_MIN)
  sde = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000)
  score_fn = edm.denoiser_score_fn(exact_consistency_fn, sde)
  key = jax.random.PRNGKey(0)
  from_config, nfe = sampling.get_sampler(config, sde)(key, score_fn, (16, 2))
  direct, _ = sampling.get_consistency_sampler(sde, (1.0,), sigma_min=SIGMA_MIN)(
      key, score_fn, (16, 2))
  np.testing.assert_array_equal(from_config, direct)
  assert nfe == 2
  swept, _ = sweep.build_sampler(sde, 'consistency', levels=(1.0,), sigma_min=SIGMA_MIN)(
      key, score_fn, (16, 2))
  np.testing.assert_array_equal(swept, direct)
  with pytest.raises(ValueError, match="'consistency' takes levels"):
    sweep.build_sampler(sde, 'consistency', steps=2)
  config.sampling.consistency_levels = ('one',)
  with pytest.raises(ValueError, match=r"consistency_levels = \('one',\) must be a tuple"):
    sampling.get_sampler(config, sde)
  config.sampling.consistency_levels = ()
  with pytest.raises(ValueError, match='samples a model of continuous noise levels'):
    sampling.get_sampler(config, sde, continuous=False)
