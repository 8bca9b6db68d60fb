"""Every sampler, driven by the exact score of a Gaussian mixture, must draw from that mixture:
component frequencies, per-component means and covariances within sampling error
(tests/oracle.py). Default step counts: N = 1000 for PC, rtol = atol = 1e-5 for the ODE."""
import functools

import jax
import numpy as np
import pytest

from score_sde import sampling
from tests import oracle

NUM_SAMPLES = 4000
GMM = oracle.mixture(2)


@functools.lru_cache(maxsize=None)
def pc_samples(name, predictor, corrector, n_steps_each=1, probability_flow=False):
  sde = oracle.SDES[name]
  sampler = sampling.get_pc_sampler(sde, predictor, corrector, snr=0.16, eps=oracle.EPS[name],
                                    n_steps_each=n_steps_each,
                                    probability_flow=probability_flow)
  run = jax.jit(lambda key: sampler(key, GMM.score_fn(sde), (NUM_SAMPLES, 2)))
  samples, nfe = run(jax.random.PRNGKey(0))
  return np.asarray(samples), nfe


@pytest.mark.parametrize('name', oracle.SDES)
@pytest.mark.parametrize('corrector', ['none', 'langevin', 'ald'])
@pytest.mark.parametrize('predictor', ['reverse_diffusion', 'euler_maruyama',
                                       'ancestral_sampling'])
def test_predictor_corrector(name, predictor, corrector):
  samples, nfe = pc_samples(name, predictor, corrector)
  assert nfe == 1000 + (0 if corrector == 'none' else 999)
  oracle.assert_follows_mixture(samples, GMM)


@pytest.mark.parametrize('name', oracle.SDES)
@pytest.mark.parametrize('predictor', ['reverse_diffusion', 'euler_maruyama'])
def test_probability_flow_predictor(name, predictor):
  samples, _ = pc_samples(name, predictor, 'none', probability_flow=True)
  oracle.assert_follows_mixture(samples, GMM)


@pytest.mark.parametrize('name,corrector', [('vp', 'langevin'), ('subvp', 'langevin'),
                                            ('ve', 'langevin'), ('ve', 'ald')])
def test_corrector_only(name, corrector):
  samples, nfe = pc_samples(name, 'none', corrector, n_steps_each=2)
  assert nfe == 2 * 999
  oracle.assert_follows_mixture(samples, GMM)


@functools.lru_cache(maxsize=None)
def ode_samples(name, solver, num_steps=100):
  sde = oracle.SDES[name]
  sampler = sampling.get_ode_sampler(sde, sampling.ODESolver(solver=solver, num_steps=num_steps),
                                     eps=oracle.EPS[name])
  samples, nfe = jax.jit(lambda key: sampler(key, GMM.score_fn(sde), (NUM_SAMPLES, 2)))(
      jax.random.PRNGKey(1))
  return np.asarray(samples), np.asarray(nfe)


@pytest.mark.parametrize('name', oracle.SDES)
def test_ode_sampler(name):
  samples, nfe = ode_samples(name, 'dopri5')
  assert nfe.shape == (NUM_SAMPLES,) and nfe.min() > 20
  oracle.assert_follows_mixture(samples, GMM)


@pytest.mark.parametrize('solver,num_steps', [('tsit5', 100), ('heun', 200), ('euler', 1000)])
def test_other_ode_solvers(solver, num_steps):
  samples, nfe = ode_samples('vp', solver, num_steps)
  if solver == 'heun':
    assert np.all(nfe == 2 * 200 + 1)
  oracle.assert_follows_mixture(samples, GMM)
