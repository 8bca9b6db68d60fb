"""SDEs against independent references: Monte-Carlo simulation, scipy, closed-form formulas."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import stats

from score_sde import sde as sde_lib

SDES = {
    'vp': sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000),
    'subvp': sde_lib.subVPSDE(beta_min=0.1, beta_max=20.0, N=1000),
    've': sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=1000),
}
X0 = np.array([1.5, -0.5, 0.0, 2.0], np.float32)


@functools.partial(jax.jit, static_argnums=(0, 2, 3, 4))
def simulate_forward(sde, key, t_end, num_steps, num_paths):
  """Fine Euler-Maruyama simulation of the forward SDE from x(0) = X0 to t_end."""
  dt = t_end / num_steps
  x = jnp.broadcast_to(jnp.asarray(X0), (num_paths, X0.size))

  def step(x, i):
    t = jnp.full((num_paths,), i * dt)
    drift, diffusion = sde.sde(x, t)
    noise = jax.random.normal(jax.random.fold_in(key, i), x.shape)
    return x + drift * dt + diffusion[:, None] * np.sqrt(dt) * noise, None

  return jax.lax.scan(step, x, jnp.arange(num_steps))[0]


@pytest.mark.parametrize('name', SDES)
@pytest.mark.parametrize('t_end', [0.25, 1.0])
def test_marginal_prob_matches_monte_carlo(name, t_end):
  sde, n = SDES[name], 20000
  x = np.asarray(simulate_forward(sde, jax.random.PRNGKey(0), t_end, 2000, n))
  mean, std = sde.marginal_prob(jnp.asarray(X0)[None], jnp.array([t_end]))
  mean, std = np.asarray(mean)[0], float(std[0])
  # Mean: within 5 standard errors. Std: the sample std has relative standard error 1/sqrt(2n)
  # = 0.5%; allow 3% for that and the O(dt) bias of the scheme.
  np.testing.assert_array_less(np.abs(x.mean(0) - mean), 5 * std / np.sqrt(n) + 1e-3)
  np.testing.assert_allclose(x.std(0), std, rtol=0.03)


@pytest.mark.parametrize('name', SDES)
def test_prior_logp_matches_scipy(name):
  sde = SDES[name]
  z = np.asarray(sde.prior_sampling(jax.random.PRNGKey(1), (5, 3, 2)))
  scale = sde.sigma_max if name == 've' else 1.0
  expected = stats.norm.logpdf(z, scale=scale).reshape(5, -1).sum(-1)
  np.testing.assert_allclose(sde.prior_logp(jnp.asarray(z)), expected, rtol=1e-5)
  np.testing.assert_allclose(z.std(), scale, rtol=0.5)


def _discretization_error(sde, t):
  """max |N f - T drift| and |N G^2 - T g^2| at times t: zero in the continuum limit."""
  x = jnp.asarray(np.tile(X0, (len(t), 1)))
  f, G = sde.discretize(x, t)
  drift, diffusion = sde.sde(x, t)
  scale = sde.N / sde.T
  return max(float(jnp.max(jnp.abs(f * scale - drift))),
             float(jnp.max(jnp.abs(G**2 * scale - diffusion**2)) / jnp.max(diffusion**2)))


@pytest.mark.parametrize('name', SDES)
def test_discretize_converges_to_sde(name):
  t = jnp.array([0.05, 0.3, 0.5, 0.9, 1.0])
  errors = [_discretization_error(SDES[name].__class__(N=n), t) for n in (100, 1000, 10000)]
  assert errors[0] > errors[1] > errors[2], errors
  assert errors[2] < 0.02, errors


def test_subvp_discretization_has_exact_marginals():
  """Propagating mean and variance through the subVP chain reproduces marginal_prob."""
  sde = sde_lib.subVPSDE(N=50)
  times = np.arange(1, sde.N + 1) * sde.T / sde.N
  mean, var = np.float64(1.0), 0.0
  for t in times:
    f, G = sde.discretize(jnp.array([[mean]], jnp.float32), jnp.array([t]))
    a = 1.0 + float(f[0, 0]) / mean
    mean, var = a * mean, a**2 * var + float(G[0]) ** 2
  expected_mean, expected_std = sde.marginal_prob(jnp.ones((1, 1)), jnp.array([sde.T]))
  np.testing.assert_allclose(mean, float(expected_mean[0, 0]), rtol=1e-4)
  np.testing.assert_allclose(np.sqrt(var), float(expected_std[0]), rtol=1e-4)


@pytest.mark.parametrize('name', SDES)
def test_alphas_exist_and_lie_in_unit_interval(name):
  alphas = SDES[name].alphas
  assert alphas.shape == (1000,)
  assert np.all((alphas > 0) & (alphas <= 1))


def test_subvp_alphas_match_vp_to_first_order():
  # Both SDEs share the drift -beta/2 x, so each step's retention is exp(-beta/N) ~ 1 - beta/N,
  # equal up to the second-order term (beta/N)^2 / 2 <= (20/1000)^2 / 2 = 2e-4.
  np.testing.assert_allclose(SDES['subvp'].alphas[1:], SDES['vp'].alphas[1:], atol=2.5e-4)


@pytest.mark.parametrize('name', SDES)
@pytest.mark.parametrize('probability_flow', [False, True])
def test_reverse_matches_formula(name, probability_flow):
  sde = SDES[name]

  def score_fn(x, t):
    return -x * (1.0 + t[:, None]) + 0.3

  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32)
  t = jnp.array([0.1, 0.5, 0.95])
  rsde = sde.reverse(score_fn, probability_flow)
  drift, diffusion = sde.sde(x, t)
  c = 0.5 if probability_flow else 1.0
  rev_drift, rev_diffusion = rsde.sde(x, t)
  np.testing.assert_allclose(rev_drift, drift - c * diffusion[:, None]**2 * score_fn(x, t),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(rev_diffusion, 0.0 if probability_flow else diffusion)
  f, G = sde.discretize(x, t)
  rev_f, rev_G = rsde.discretize(x, t)
  np.testing.assert_allclose(rev_f, f - c * G[:, None]**2 * score_fn(x, t), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(rev_G, 0.0 if probability_flow else G)


def test_ve_std_is_sigma_t_as_in_official_code():
  sde = SDES['ve']
  t = jnp.array([0.0, 0.5, 1.0])
  np.testing.assert_allclose(sde.marginal_prob(jnp.zeros((3, 1)), t)[1],
                             [0.01, 0.01 * 5000**0.5, 50.0], rtol=1e-5)


def _config(**model):
  config = ml_collections.ConfigDict({'training': {'sde': 'vpsde'},
                                      'model': {'num_scales': 10, 'beta_min': 0.1, 'beta_max': 20.0,
                                                'sigma_min': 0.01, 'sigma_max': 50.0}})
  config.model.update(model)
  return config


def test_get_sde_builds_each_sde_from_config():
  config = _config(num_scales=7)
  for name, cls in [('vpsde', sde_lib.VPSDE), ('subvpsde', sde_lib.subVPSDE),
                    ('vesde', sde_lib.VESDE)]:
    config.training.sde = name
    sde = sde_lib.get_sde(config)
    assert isinstance(sde, cls) and sde.N == 7


@pytest.mark.parametrize('field,value,message', [
    ('training.sde', 'vp', r"training.sde = 'vp' is not supported; allowed: \['rectified_flow', "
                           r"'subvpsde', 'vesde', 'vpsde'\]"),
    ('model.num_scales', 0, 'model.num_scales = 0 must be a positive integer'),
    ('model.beta_max', -1.0, 'model.beta_max = -1.0 must be a positive number'),
])
def test_get_sde_rejects_bad_values(field, value, message):
  config = _config()
  section, key = field.split('.')
  config[section][key] = value
  with pytest.raises(ValueError, match=message):
    sde_lib.get_sde(config)


def test_get_sde_names_a_missing_field():
  config = _config()
  del config.model['beta_min']
  with pytest.raises(ValueError, match='model.beta_min is missing'):
    sde_lib.get_sde(config)
