"""Losses against closed-form minima for Gaussian data; train-step arithmetic."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import integrate

from score_sde import losses
from score_sde import sde as sde_lib
from score_sde.models import init_model

from .helpers import tiny_config

MU, S, DIM = 0.7, 1.3, 3  # data x0 ~ N(MU, S^2 I_DIM)
SDES = {'vp': sde_lib.VPSDE(), 'subvp': sde_lib.subVPSDE(), 've': sde_lib.VESDE(sigma_max=20.0)}


def exact_score(sde):
  """Score of the perturbed Gaussian p_t = N(m MU, (m^2 S^2 + std^2) I)."""

  def score_fn(x, t, rng=None):
    m = sde.marginal_prob(jnp.ones((1,)), t)[0]
    std = sde.marginal_prob(x, t)[1]
    return -(x - (m * MU)[:, None]) / (m**2 * S**2 + std**2)[:, None]

  return score_fn


def expected_minimum(sde, likelihood_weighting, eps=1e-5):
  """E_t of the per-dimension minimum: the residual variance of z given x(t) is
  m^2 S^2 / (m^2 S^2 + std^2); likelihood weighting multiplies it by g^2 / std^2 (which grows
  like 1/t near 0, hence the log-spaced trapezoid rule)."""
  t = np.geomspace(eps, sde.T, 200001)
  mean, std = sde.marginal_prob(jnp.ones((t.size,)), jnp.asarray(t))
  m, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
  residual = m**2 * S**2 / (m**2 * S**2 + std**2)
  if likelihood_weighting:
    residual *= np.asarray(sde.sde(jnp.zeros((t.size,)), jnp.asarray(t))[1], np.float64)**2 / std**2
  return integrate.trapezoid(residual, t) / (sde.T - eps)


def sample_loss(sde, score_fn, n_batches=20, batch=20000, **kwargs):
  """Per-batch losses on fresh Gaussian data; their mean and standard error."""
  loss = jax.jit(lambda key: jnp.mean(losses.continuous_dsm_loss(
      key, MU + S * jax.random.normal(jax.random.fold_in(key, 7), (batch, DIM)), score_fn, sde,
      **kwargs)))
  values = np.array([loss(jax.random.PRNGKey(i)) for i in range(n_batches)])
  return values, values.mean(), values.std() / np.sqrt(n_batches)


@pytest.mark.parametrize('name', SDES)
@pytest.mark.parametrize('likelihood_weighting', [False, True])
def test_exact_score_attains_closed_form_minimum(name, likelihood_weighting):
  sde = SDES[name]
  _, mean, se = sample_loss(sde, exact_score(sde), reduce_mean=True,
                            likelihood_weighting=likelihood_weighting)
  expected = expected_minimum(sde, likelihood_weighting)
  assert abs(mean - expected) < 4 * se + 1e-3 * expected, (mean, expected, se)


@pytest.mark.parametrize('name', SDES)
def test_perturbed_score_scores_strictly_higher(name):
  sde = SDES[name]
  offset = jnp.array([0.2, -0.1, 0.05])

  def perturbed(x, t, rng=None):
    return exact_score(sde)(x, t) + offset

  kwargs = dict(reduce_mean=False, likelihood_weighting=False)
  exact_values, _, _ = sample_loss(sde, exact_score(sde), n_batches=5, **kwargs)
  perturbed_values, _, _ = sample_loss(sde, perturbed, n_batches=5, **kwargs)
  assert np.all(perturbed_values > exact_values)  # same keys, so same t and z: pointwise
  # The excess is E_t[std(t)^2] |offset|^2 / 2 (reduce_mean=False halves the sum).
  t = np.linspace(1e-5, 1, 20001)
  mean_var = np.mean(np.asarray(sde.marginal_prob(jnp.ones(1), jnp.asarray(t))[1]) ** 2)
  expected_excess = 0.5 * mean_var * float(jnp.sum(offset**2))
  np.testing.assert_allclose(np.mean(perturbed_values - exact_values), expected_excess, rtol=0.05)


def test_ddpm_loss_minimum_with_exact_noise_prediction():
  sde = sde_lib.VPSDE(N=1000)
  a, b = np.sqrt(sde.alphas_cumprod), np.sqrt(1 - sde.alphas_cumprod)

  def model_fn(x, labels, rng=None):  # E[z | x_i] for Gaussian data
    ai, bi = jnp.asarray(a, jnp.float32)[labels], jnp.asarray(b, jnp.float32)[labels]
    return bi[:, None] * (x - (ai * MU)[:, None]) / (ai**2 * S**2 + bi**2)[:, None]

  loss = jax.jit(lambda key: jnp.mean(losses.ddpm_loss(
      key, MU + S * jax.random.normal(jax.random.fold_in(key, 7), (50000, DIM)), model_fn, sde,
      reduce_mean=True)))
  values = np.array([loss(jax.random.PRNGKey(i)) for i in range(10)])
  expected = np.mean(a**2 * S**2 / (a**2 * S**2 + b**2))
  assert abs(values.mean() - expected) < 4 * values.std() / np.sqrt(10) + 1e-4


def test_smld_loss_minimum_with_exact_score():
  sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=20.0, N=100)
  sigmas_desc = sde.discrete_sigmas[::-1]

  def model_fn(x, labels, rng=None):
    sigma = jnp.asarray(sigmas_desc, jnp.float32)[labels]
    return -(x - MU) / (S**2 + sigma**2)[:, None]

  loss = jax.jit(lambda key: jnp.mean(losses.smld_loss(
      key, MU + S * jax.random.normal(jax.random.fold_in(key, 7), (50000, DIM)), model_fn, sde,
      reduce_mean=True)))
  values = np.array([loss(jax.random.PRNGKey(i)) for i in range(10)])
  expected = np.mean(S**2 / (S**2 + sigmas_desc**2))
  assert abs(values.mean() - expected) < 4 * values.std() / np.sqrt(10) + 1e-4


@pytest.fixture(scope='module')
def setup():
  config = tiny_config(sde='vpsde')
  config.optim.warmup = 0
  sde = sde_lib.get_sde(config)
  model, variables = init_model(jax.random.PRNGKey(0), config, (2,))
  optimizer = losses.get_optimizer(config)
  state = losses.init_train_state(jax.random.PRNGKey(1), variables['params'], optimizer)
  train_steps = jax.jit(losses.get_train_step(config, sde, model, optimizer))
  batches = jnp.asarray(np.random.default_rng(0).normal(size=(3, 64, 2)), jnp.float32)
  return config, sde, model, state, train_steps, batches


def test_one_train_step_lowers_the_loss_on_a_fixed_batch(setup):
  config, sde, model, state, train_steps, batches = setup
  loss_fn = jax.jit(losses.get_loss_fn(config, sde, model, train=False))
  key = jax.random.PRNGKey(5)
  before = loss_fn(state.params, key, batches[0])
  new_state, _ = train_steps(state, batches[:1])
  after = loss_fn(new_state.params, key, batches[0])
  assert after < before
  assert int(new_state.step) == 1


def test_ema_arithmetic(setup):
  config, _, _, state, train_steps, batches = setup
  new_state, _ = train_steps(state, batches[:1])
  rate = config.model.ema_rate
  expected = jax.tree.map(lambda e, p: rate * e + (1 - rate) * p, state.params_ema, new_state.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               new_state.params_ema, expected)
  tree = losses.ema_update({'w': jnp.array([1.0, 2.0])}, {'w': jnp.array([3.0, 6.0])}, 0.75)
  np.testing.assert_allclose(tree['w'], [1.5, 3.0])


def test_scanned_steps_equal_single_steps(setup):
  _, _, _, state, train_steps, batches = setup
  scanned, scanned_losses = train_steps(state, batches)
  single, single_losses = state, []
  for i in range(3):
    single, loss = train_steps(single, batches[i:i + 1])
    single_losses.append(loss[0])
  assert int(scanned.step) == int(single.step) == 3
  np.testing.assert_allclose(scanned_losses, single_losses, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               (scanned.params, scanned.params_ema), (single.params, single.params_ema))


def test_warmup_and_clipping():
  config = tiny_config(sde='vpsde')
  config.optim.update(lr=1e-2, warmup=4, grad_clip=1.0)
  optimizer = losses.get_optimizer(config)
  params = {'w': jnp.zeros(3)}
  grads = {'w': jnp.array([300.0, -400.0, 0.0])}  # norm 500: clipped to norm 1
  opt_state = optimizer.init(params)
  for k in (1, 2):
    updates, opt_state = optimizer.update(grads, opt_state, params)
    # Adam's update is lr_k * m_hat / (sqrt(v_hat) + eps) = lr_k * sign(g) for a constant g.
    np.testing.assert_allclose(updates['w'], -1e-2 * k / 4 * np.array([1.0, -1.0, 0.0]), rtol=1e-4)
  clipped = optax.clip_by_global_norm(1.0).update(grads, None)[0]
  np.testing.assert_allclose(clipped['w'], [0.6, -0.8, 0.0], rtol=1e-6)


@pytest.mark.parametrize('sde_name,continuous,weighting,message', [
    ('subvpsde', False, False, 'training.continuous = False is only supported'),
    ('vpsde', False, True, 'training.likelihood_weighting = True needs'),
])
def test_unsupported_loss_combinations_are_refused(sde_name, continuous, weighting, message):
  config = tiny_config(sde=sde_name)
  config.training.update(continuous=continuous, likelihood_weighting=weighting)
  with pytest.raises(ValueError, match=message):
    losses.get_loss_fn(config, sde_lib.get_sde(config), None, train=True)
