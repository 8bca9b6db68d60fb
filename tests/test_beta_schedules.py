"""The beta schedules of the VP and sub-VP SDEs against independent references: diffusers' betas and
alphas_cumprod (tests/data/diffusers_reference.json, made by scripts/diffusers_reference.py),
numerical integration of beta(t), the ODEs of the marginal mean and variance, the schedules'
own definitions, and the Gaussian-mixture oracle sampled with PC and the fast samplers."""
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import integrate

from score_sde import sampling
from score_sde import sde as sde_lib
from tests import oracle

REFERENCE = json.loads((pathlib.Path(__file__).parent / 'data' /
                        'diffusers_reference.json').read_text())
# Stable Diffusion's chain (diffusers' beta_start = 0.00085, beta_end = 0.012) and the cosine one.
SCHEDULES = {'scaled_linear': dict(beta_schedule='scaled_linear', beta_min=0.85, beta_max=12.0),
             'cosine': dict(beta_schedule='cosine')}
DIFFUSERS = {'linear': sde_lib.VPSDE(),
             'scaled_linear': sde_lib.VPSDE(**SCHEDULES['scaled_linear']),
             'squaredcos_cap_v2': sde_lib.VPSDE(**SCHEDULES['cosine'])}
ALL = {'linear': {}, **SCHEDULES}
CLASSES = {'vp': sde_lib.VPSDE, 'subvp': sde_lib.subVPSDE}


@pytest.mark.parametrize('name', DIFFUSERS)
def test_discrete_betas_are_diffusers(name):
  """diffusers computes in float32: its betas are ours rounded (to 2 ulp), its alphas_cumprod
  carries the rounding of a float32 cumulative product (1.3e-5 relative at the end of the
  cosine chain, where alphabar ~ 1e-8)."""
  sde, ref = DIFFUSERS[name], REFERENCE['schedules'][name]
  betas, index = sde.discrete_betas, ref['indices']
  np.testing.assert_allclose(betas[:5], ref['betas_first'], rtol=3e-7)
  np.testing.assert_allclose(betas[-5:], ref['betas_last'], rtol=3e-7)
  np.testing.assert_allclose(betas[index], ref['betas'], rtol=3e-7)
  np.testing.assert_allclose(sde.alphas_cumprod[index], ref['alphas_cumprod'], rtol=2e-5)


def test_linear_schedule_is_the_official_one():
  vp, subvp = sde_lib.VPSDE(N=1000), sde_lib.subVPSDE(N=1000)
  np.testing.assert_array_equal(vp.discrete_betas, np.linspace(0.1 / 1000, 20.0 / 1000, 1000))
  t = np.linspace(0.0, 1.0, 11)
  np.testing.assert_array_equal(subvp.log_mean_coeff(t), -0.25 * t**2 * 19.9 - 0.5 * t * 0.1)
  t = jnp.asarray(t, jnp.float32)
  _, diffusion = subvp.sde(jnp.zeros((11, 1)), t)
  np.testing.assert_array_equal(
      diffusion, jnp.sqrt((0.1 + t * 19.9) * (1.0 - jnp.exp(-2.0 * 0.1 * t - 19.9 * t**2))))


def test_schedules_are_their_definitions():
  sd, cosine = sde_lib.VPSDE(**SCHEDULES['scaled_linear']), sde_lib.VPSDE(**SCHEDULES['cosine'])
  t = np.arange(1000) / 999
  np.testing.assert_allclose(sd.beta(t) / 1000, np.linspace(0.00085**0.5, 0.012**0.5, 1000)**2,
                             rtol=1e-12)
  f = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2)**2  # noqa: E731
  np.testing.assert_allclose(np.exp(2 * cosine.log_mean_coeff(t)),
                             f(sde_lib.COSINE_U_MAX * t) / f(0.0), rtol=1e-12)
  # u_max: the continuous rate per unit of u reaches 999 there (DPM-Solver's cosine_t_max).
  np.testing.assert_allclose(cosine.beta(np.array([1.0])), 999 * sde_lib.COSINE_U_MAX, rtol=1e-12)
  np.testing.assert_allclose(sde_lib.COSINE_U_MAX, 0.9979980044931365, rtol=1e-15)
  for sde in DIFFUSERS.values():  # the chain and the continuous kernel agree at t_i = i / (N - 1)
    alpha = np.exp(sde.log_mean_coeff(t))
    np.testing.assert_allclose(np.sqrt(sde.alphas_cumprod), alpha, atol=4e-3)


@pytest.mark.parametrize('kind', CLASSES)
@pytest.mark.parametrize('schedule', ALL)
def test_log_mean_coeff_integrates_beta(kind, schedule):
  sde = CLASSES[kind](**ALL[schedule])
  t = np.array([0.0, 0.01, 0.3, 0.7, 0.95, 1.0])
  integral = [integrate.quad(lambda s: float(sde.beta(np.float64(s))), 0.0, v, epsabs=1e-13,
                             epsrel=1e-12)[0] for v in t]
  np.testing.assert_allclose(-2.0 * sde.log_mean_coeff(t), integral, rtol=1e-10, atol=1e-13)
  traced = jax.jit(sde.log_mean_coeff)(jnp.asarray(t, jnp.float32))  # the float32 jnp path
  np.testing.assert_allclose(traced, sde.log_mean_coeff(t), rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize('kind', CLASSES)
@pytest.mark.parametrize('schedule', ALL)
def test_marginal_moments_obey_their_odes(kind, schedule):
  """For dx = f(t) x dt + g(t) dw the kernel's mean scale m and variance v satisfy m' = f m and
  v' = 2 f v + g^2 (Song et al. 2021, App. B); the derivatives by autodiff, in float64."""
  sde = CLASSES[kind](**ALL[schedule])
  with jax.enable_x64(True):
    t = jnp.linspace(0.02, 0.98, 25)
    ones = jnp.ones((25, 1))

    def moments(t):
      mean, std = sde.marginal_prob(ones, t)
      return mean[:, 0], std**2

    (m, v), (dm, dv) = jax.jvp(moments, (t,), (jnp.ones_like(t),))
    drift, diffusion = sde.sde(ones, t)
    f = drift[:, 0]
    np.testing.assert_allclose(dm, f * m, rtol=1e-10)
    np.testing.assert_allclose(dv, 2 * f * v + diffusion**2, rtol=1e-8, atol=1e-10)


def _config(**model):
  return ml_collections.ConfigDict({
      'training': {'sde': 'vpsde'},
      'model': {'num_scales': 1000, 'beta_min': 0.85, 'beta_max': 12.0, 'sigma_min': 0.01,
                'sigma_max': 50.0, **model}})


def test_get_sde_reads_the_schedule():
  assert sde_lib.get_sde(_config(beta_schedule=None)).beta_schedule == 'linear'
  assert sde_lib.get_sde(_config()).beta_schedule == 'linear'  # configs without the field
  sd = sde_lib.get_sde(_config(beta_schedule='scaled_linear'))
  np.testing.assert_array_equal(sd.discrete_betas, DIFFUSERS['scaled_linear'].discrete_betas)
  config = _config(beta_schedule='cosine')
  config.training.sde = 'subvpsde'
  assert sde_lib.get_sde(config) == sde_lib.subVPSDE(beta_min=0.85, beta_max=12.0, N=1000,
                                                     beta_schedule='cosine')


@pytest.mark.parametrize('sde_name,schedule,message', [
    ('vpsde', 'quadratic', r"model.beta_schedule = 'quadratic' is not supported; allowed: "
                           r"\['cosine', 'linear', 'scaled_linear'\]"),
    ('vesde', 'cosine', r"model.beta_schedule = 'cosine' is for the VP and sub-VP SDEs"),
])
def test_get_sde_refuses_bad_schedules(sde_name, schedule, message):
  config = _config(beta_schedule=schedule)
  config.training.sde = sde_name
  with pytest.raises(ValueError, match=message):
    sde_lib.get_sde(config)
  with pytest.raises(ValueError, match="beta_schedule = 'squared' is not supported"):
    sde_lib.subVPSDE(beta_schedule='squared')


SAMPLERS = {
    'pc': lambda sde: sampling.get_pc_sampler(sde, 'reverse_diffusion', 'none'),
    'ddim': lambda sde: sampling.get_ddim_sampler(sde, nfe=100),
    'dpm_2m': lambda sde: sampling.get_dpm_solver_sampler(sde, nfe=50),
    'edm': lambda sde: sampling.get_edm_sampler(sde, nfe=51),
}
CASES = [(kind, schedule, sampler) for schedule in SCHEDULES for kind, samplers in
         (('vp', SAMPLERS), ('subvp', ('pc', 'dpm_2m'))) for sampler in samplers]


@pytest.mark.parametrize('kind,schedule,sampler', CASES)
def test_samplers_follow_the_mixture(kind, schedule, sampler):
  sde = CLASSES[kind](**SCHEDULES[schedule])
  sample = SAMPLERS[sampler](sde)
  samples, _ = jax.jit(lambda key: sample(key, oracle.mixture(2).score_fn(sde), (4000, 2)))(
      jax.random.PRNGKey(0))
  oracle.assert_follows_mixture(samples, oracle.mixture(2))

