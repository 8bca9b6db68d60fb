"""The probability-flow ODE: invertibility, exact NFE counts, config selection."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from score_sde import sampling
from tests import oracle

GMM = oracle.mixture(2)


@pytest.mark.parametrize('name', oracle.SDES)
def test_decode_inverts_encode(name):
  sde = oracle.SDES[name]
  encode, decode = sampling.get_flow_maps(sde, sampling.ODESolver(rtol=1e-6, atol=1e-6),
                                          eps=oracle.EPS[name])
  x, _ = GMM.sample(jax.random.PRNGKey(0), 64)
  roundtrip = jax.jit(lambda x: decode(GMM.score_fn(sde), encode(GMM.score_fn(sde), x)[0]))
  x_back, nfe = roundtrip(x)
  assert nfe.shape == (64,)
  np.testing.assert_allclose(x_back, x, atol=1e-4)
  z, _ = jax.jit(lambda x: encode(GMM.score_fn(sde), x))(x)  # the codes look like the prior
  prior_std = float(jnp.std(sde.prior_sampling(jax.random.PRNGKey(1), (4096,))))
  assert 0.7 * prior_std < float(jnp.std(z)) < 1.3 * prior_std


@pytest.mark.parametrize('solver,per_step', [('dopri5', 6), ('tsit5', 6), ('euler', 1),
                                             ('heun', 2)])
def test_nfe_is_the_number_of_score_evaluations(solver, per_step):
  sde, calls = oracle.SDES['vp'], []

  def counting_score(x, t):
    jax.debug.callback(lambda: calls.append(1))
    return GMM.score(x, t, sde)

  sampler = sampling.get_ode_sampler(sde, sampling.ODESolver(solver=solver, num_steps=30),
                                     noise_removal=True)
  _, nfe = jax.jit(lambda key: sampler(key, counting_score, (1, 2)))(jax.random.PRNGKey(0))
  jax.effects_barrier()
  assert int(nfe[0]) == len(calls)
  if solver in ('euler', 'heun'):
    assert len(calls) == 30 * per_step + 1


def test_get_sampler_selects_the_ode():
  config = ml_collections.ConfigDict({'sampling': dict(
      method='ode', ode_solver='heun', rtol=1e-5, atol=1e-5, ode_steps=7, noise_removal=False,
      eps=1e-3)})
  sampler = sampling.get_sampler(config, oracle.SDES['ve'])
  _, nfe = sampler(jax.random.PRNGKey(0), GMM.score_fn(oracle.SDES['ve']), (3, 2))
  np.testing.assert_array_equal(nfe, [14, 14, 14])
  config.sampling.ode_solver = 'rk4'
  with pytest.raises(ValueError, match=r"sampling.ode_solver = 'rk4'.*dopri5"):
    sampling.get_sampler(config, oracle.SDES['ve'])


def test_bad_solver_settings_are_refused():
  with pytest.raises(ValueError, match=r"Unknown ODE solver 'rk45'; allowed: \['dopri5', 'euler'"):
    sampling.ODESolver(solver='rk45')
  with pytest.raises(ValueError, match='rtol = 0 must be positive'):
    sampling.ODESolver(rtol=0)
  with pytest.raises(ValueError, match=r'eps = 1.5 must lie in \(0, T = 1.0\)'):
    sampling.get_ode_sampler(oracle.SDES['vp'], eps=1.5)
