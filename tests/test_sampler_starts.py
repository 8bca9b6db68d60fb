"""Runs that start from a given state at a given time (t_start, x_start; SDEdit, img2img) on every
sampler: the default start is untouched (bit for bit), runs from exact samples of the perturbed
mixture p_{t_start} return the data distribution, the discrete grids start at the step at or
below t_start, and bad starts are refused."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import sampling
from score_sde import sde as sde_lib
from score_sde.sampling import grid, start
from tests import oracle
from tests.helpers import tiny_config

GMM = oracle.mixture(2)
SHAPE = (64, 2)
# name -> build(sde, eps, **start): one of each sampler kind, deterministic and stochastic.
BUILDERS = {
    'pc': lambda sde, eps, **kw: sampling.get_pc_sampler(sde, 'reverse_diffusion', 'ald',
                                                         eps=eps, **kw),
    'ode': lambda sde, eps, **kw: sampling.get_ode_sampler(
        sde, sampling.ODESolver(rtol=1e-3, atol=1e-3), eps=eps, **kw),
    'ddim': lambda sde, eps, **kw: sampling.get_ddim_sampler(sde, nfe=20, eps=eps, **kw),
    'ddim_eta': lambda sde, eps, **kw: sampling.get_ddim_sampler(sde, nfe=20, eta=0.5, eps=eps,
                                                                 continuous=False, **kw),
    'dpm_3m': lambda sde, eps, **kw: sampling.get_dpm_solver_sampler(sde, variant='3M', nfe=20,
                                                                     eps=eps, **kw),
    'dpm_2s': lambda sde, eps, **kw: sampling.get_dpm_solver_sampler(sde, variant='2S', nfe=21,
                                                                     eps=eps, **kw),
    'edm_churn': lambda sde, eps, **kw: sampling.get_edm_sampler(sde, nfe=21, s_churn=10.0,
                                                                 eps=eps, **kw),
}


SHORT = {'vp': sde_lib.VPSDE(N=100), 've': sde_lib.VESDE(sigma_max=50.0, N=100)}  # cheap PC


@pytest.mark.parametrize('name,sampler', [('vp', 'pc'), ('vp', 'ode'), ('ve', 'ddim'),
                                          ('vp', 'ddim_eta'), ('ve', 'dpm_3m'), ('vp', 'dpm_2s'),
                                          ('ve', 'edm_churn')])
def test_default_start_is_the_prior_draw(name, sampler):
  """x_start = the prior draws the run would make (with t_start None or T) gives the default run
  bit for bit (the default itself is unchanged: the samplers' outputs before and after these options
  were compared bit for bit when they were added). EDM's default run is compiled with its first
  operation, x / alpha_0, folded into the prior draw's own scaling, which a given x_start cannot
  share: there the two agree to float32 rounding."""
  sde, eps = SHORT[name], oracle.EPS[name]
  key, first_index = jax.random.PRNGKey(3), 5
  prior = jax.jit(lambda: start.prior_draws(
      sde, sampling.streams.sample_keys(key, first_index, SHAPE[0]), SHAPE))()
  default, explicit = BUILDERS[sampler](sde, eps), BUILDERS[sampler](sde, eps, t_start=sde.T)
  x, nfe = jax.jit(lambda: default(key, GMM.score_fn(sde), SHAPE, first_index))()
  x_given, nfe_given = jax.jit(lambda x_start: explicit(key, GMM.score_fn(sde), SHAPE, first_index,
                                                        x_start=x_start))(prior)
  if sampler.startswith('edm'):
    np.testing.assert_allclose(x_given, x, rtol=1e-6, atol=1e-6)
  else:
    np.testing.assert_array_equal(x_given, x)
  np.testing.assert_array_equal(nfe_given, nfe)


N_SDEDIT = 10_000
# Sliced W1 of 10,000 exact samples to the mixture (the floor): 0.028 on average, 0.012 - 0.049
# over 15 seeds; a run told the wrong start (t_start = 0.4 for states at 0.5) lands near 0.2.
W1_BOUND = 0.06
SDEDIT = {
    'pc': lambda sde, eps: sampling.get_pc_sampler(sde, eps=eps, t_start=0.5),
    'ddim': lambda sde, eps: sampling.get_ddim_sampler(sde, nfe=50, eps=eps, t_start=0.5),
    'dpm_2m': lambda sde, eps: sampling.get_dpm_solver_sampler(sde, nfe=20, eps=eps, t_start=0.5),
}


@functools.lru_cache(maxsize=None)
def perturbed_samples(name):
  """N_SDEDIT exact samples of p_0.5, the mixture perturbed to t = 0.5."""
  draw = jax.jit(GMM.at_time(oracle.SDES[name], 0.5).sample, static_argnums=1)
  return np.asarray(draw(jax.random.PRNGKey(1), N_SDEDIT)[0])


@pytest.mark.parametrize('name', ['vp', 've'])
@pytest.mark.parametrize('sampler', SDEDIT)
def test_runs_from_exact_marginal_samples_return_the_data(name, sampler):
  sde = oracle.SDES[name]
  sample = SDEDIT[sampler](sde, oracle.EPS[name])
  x, nfe = jax.jit(lambda key, x_start: sample(key, GMM.score_fn(sde), (N_SDEDIT, 2),
                                               x_start=x_start))(jax.random.PRNGKey(0),
                                                                 perturbed_samples(name))
  # PC: t_i = 1 - i (1 - eps) / 999 is 0.5 at i = 500, where the run starts.
  assert nfe == {'pc': 500, 'ddim': 50, 'dpm_2m': 20}[sampler]
  oracle.assert_follows_mixture(x, GMM)
  assert GMM.sliced_wasserstein(x) < W1_BOUND


def test_discrete_grid_starts_at_the_step_at_or_below_t_start():
  sde = sde_lib.VPSDE(N=1000)
  nodes = grid.time_grid(sde, 20, 1e-3, 'time_uniform', continuous=False, t_start=0.5)
  index = np.rint(nodes.times * 999).astype(int)
  assert index[0] == 499 and index[-1] == 0 and np.all(np.diff(index) < 0)
  on_step = grid.time_grid(sde, 20, 1e-3, continuous=False, t_start=600 / 999)
  assert np.rint(on_step.times[0] * 999) == 600  # t = i T / (N - 1) itself is step i
  with pytest.raises(ValueError, match='num_steps = 500 exceeds the 499 steps of this discrete '
                                       'model between t_start = 0.5 and eps = 0.001'):
    grid.time_grid(sde, 500, 1e-3, continuous=False, t_start=0.5)
  continuous = grid.time_grid(sde, 4, 1e-3, 'time_uniform', t_start=0.5)
  np.testing.assert_allclose(continuous.times, [0.5, 0.37525, 0.2505, 0.12575, 0.001])


@pytest.mark.parametrize('sampler', BUILDERS)
def test_bad_starts_are_refused(sampler):
  sde, eps = oracle.SDES['vp'], oracle.EPS['vp']
  for t_start in (eps, 0.0, 1.5):
    with pytest.raises(ValueError, match=rf't_start = {t_start} must lie in \(eps, T\]'):
      BUILDERS[sampler](sde, eps, t_start=t_start)
  sample = BUILDERS[sampler](sde, eps, t_start=0.5)
  with pytest.raises(ValueError, match=r'starts at t_start = 0.5 < T = 1.0 needs x_start'):
    sample(jax.random.PRNGKey(0), GMM.score_fn(sde), SHAPE)
  with pytest.raises(ValueError, match=r'x_start has shape \(64, 3\); the run samples shape '
                                       r'\(64, 2\)'):
    sample(jax.random.PRNGKey(0), GMM.score_fn(sde), SHAPE, x_start=jnp.zeros((64, 3)))


@pytest.mark.parametrize('method', ['pc', 'ode', 'ddim'])
def test_get_sampler_passes_t_start(method):
  config = tiny_config()
  config.sampling.update(method=method, steps=10 if method == 'ddim' else None)
  sde = sde_lib.VPSDE(N=50)
  sample = sampling.get_sampler(config, sde, t_start=0.5)
  x_start = jnp.asarray(perturbed_samples('vp')[:8])
  x, nfe = sample(jax.random.PRNGKey(0), GMM.score_fn(sde), (8, 2), x_start=x_start)
  assert x.shape == (8, 2) and np.all(np.isfinite(x))
  if method == 'pc':  # 50 steps, t_i = 1 - i (1 - 1e-3) / 49: the first at or below 0.5 is i = 25
    assert nfe == 25
  with pytest.raises(ValueError, match='needs x_start'):
    sample(jax.random.PRNGKey(0), GMM.score_fn(sde), (8, 2))
