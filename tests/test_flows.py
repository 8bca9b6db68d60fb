"""Rectified flow and flow matching against independent references: the SDE's moment equations and
a simulation of it, the Gaussian closed forms of velocity, score and flow-matching loss, the
mixture oracle's exact samples and log-density, and a training / evaluation run of
configs/toy/rectified_flow.py through the drivers. Reflow: tests/test_reflow.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from configs.toy import rectified_flow as rectified_flow_config
from score_sde import evaluate, flows, likelihood, losses, models, sampling, train, trained
from score_sde import sde as sde_lib
from score_sde.gaussian_mixture import GaussianMixture
from score_sde.sampling import guidance, start, streams
from tests import helpers, oracle

RF = sde_lib.RectifiedFlow()
SDES = {'rectified_flow': RF, **oracle.SDES}
MU, C = np.array([1.0, -0.5]), np.array([0.3, 2.0])  # data N(MU, diag(C))
GAUSSIAN = GaussianMixture(np.ones(1), MU[None], np.diag(C)[None])
GMM = oracle.mixture(2)
EPS = 1e-3


def gaussian_kernel(name, t):
  """alpha, sigma and their time derivatives in closed form: the linear path, or the linear VP
  schedule (beta_min 0.1, beta_max 20): alpha' = -beta alpha / 2, sigma = sqrt(1 - alpha^2)."""
  if name == 'rectified_flow':
    return 1.0 - t, t, -jnp.ones_like(t), jnp.ones_like(t)
  beta = 0.1 + t * 19.9
  alpha = jnp.exp(-0.25 * t**2 * 19.9 - 0.05 * t)
  sigma = jnp.sqrt(1.0 - alpha**2)
  return alpha, sigma, -0.5 * beta * alpha, 0.5 * beta * alpha**2 / sigma


def gaussian_velocity(name):
  """The exact velocity of data N(MU, diag(C)): x(t) = alpha MU + sqrt(V) xi with V = alpha^2 C +
  sigma^2 moves as dx/dt = alpha' MU + V' / (2 V) (x - alpha MU)."""

  def velocity(x, t, *unused):
    alpha, sigma, d_alpha, d_sigma = (v[:, None] for v in gaussian_kernel(name, t))
    variance = alpha**2 * C + sigma**2
    return d_alpha * MU + (alpha * d_alpha * C + sigma * d_sigma) / variance * (x - alpha * MU)

  return velocity


# The process -------------------------------------------------------------------------------------

def test_kernel_drift_and_diffusion_solve_the_moment_equations():
  # A Gaussian kernel alpha x0 + sigma z is the law of dx = f x dt + g dw iff d alpha/dt = f alpha
  # and d sigma^2/dt = 2 f sigma^2 + g^2. alpha is linear and sigma^2 quadratic in t: central
  # differences are exact.
  t, h = jnp.linspace(0.05, 0.95, 19), 0.01
  ones = jnp.ones((len(t), 1))

  def alpha_variance(time):
    mean, std = RF.marginal_prob(ones, time)
    return np.asarray(mean[:, 0], np.float64), np.asarray(std, np.float64)**2

  (alpha_hi, var_hi), (alpha_lo, var_lo) = alpha_variance(t + h), alpha_variance(t - h)
  alpha, variance = alpha_variance(t)
  drift, diffusion = RF.sde(ones, t)
  f, g2 = np.asarray(drift[:, 0]), np.asarray(diffusion)**2
  np.testing.assert_allclose((alpha_hi - alpha_lo) / (2 * h), f * alpha, atol=1e-4)
  np.testing.assert_allclose((var_hi - var_lo) / (2 * h), 2 * f * variance + g2, atol=1e-4)
  np.testing.assert_allclose(alpha, 1 - np.asarray(t), atol=1e-7)
  np.testing.assert_allclose(variance, np.asarray(t)**2, atol=1e-6)


def test_forward_sde_simulation_follows_the_kernel():
  x0, n, t_end, num_steps = jnp.array([1.5, -0.5, 0.0, 2.0]), 10000, 0.9, 1000
  dt = t_end / num_steps

  def step(x, i):
    drift, diffusion = RF.sde(x, jnp.full((n,), i * dt))
    noise = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(0), i), x.shape)
    return x + drift * dt + diffusion[:, None] * np.sqrt(dt) * noise, None

  x = np.asarray(jax.jit(lambda: jax.lax.scan(step, jnp.tile(x0, (n, 1)),
                                              jnp.arange(num_steps))[0])())
  np.testing.assert_array_less(np.abs(x.mean(0) - (1 - t_end) * x0), 5 * t_end / np.sqrt(n) + 2e-3)
  np.testing.assert_allclose(x.std(0), t_end, rtol=0.03)  # 0.7% sampling error, O(dt) bias


def test_transition_chain_has_the_kernel_marginals_and_ends_at_the_prior():
  sde = sde_lib.RectifiedFlow(N=50)
  ends = np.arange(1, 51) / 50
  a, G = (np.asarray(v, np.float64) for v in sde.transition(jnp.asarray(ends, jnp.float32)))
  mean_scale, variance = 1.0, 0.0
  for k in range(50):
    mean_scale, variance = a[k] * mean_scale, a[k]**2 * variance + G[k]**2
    np.testing.assert_allclose([mean_scale, variance], [1 - ends[k], ends[k]**2], atol=1e-5)
  assert a[-1] == 0 and G[-1] == 1  # the last step draws the prior N(0, I) exactly
  assert np.all((sde.alphas >= 0) & (sde.alphas <= 1)) and sde.alphas.shape == (50,)
  z = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)
  np.testing.assert_allclose(sde.prior_logp(z), -0.5 * jnp.sum(z**2, -1) - 1.5 * np.log(2 * np.pi),
                             rtol=1e-6)


def test_get_sde_builds_the_flow_and_refuses_a_beta_schedule():
  config = helpers.tiny_config('rectified_flow')
  assert sde_lib.get_sde(config) == sde_lib.RectifiedFlow(N=50)
  config.model.beta_schedule = 'cosine'
  with pytest.raises(ValueError, match=r"beta_schedule = 'cosine' is for the VP and sub-VP SDEs; "
                                       r"with training.sde = 'rectified_flow' set it to None"):
    sde_lib.get_sde(config)


# Velocity and score ------------------------------------------------------------------------------

@pytest.mark.parametrize('name', SDES)
def test_velocity_and_score_convert_into_each_other(name):
  sde, key = SDES[name], jax.random.PRNGKey(0)
  x, s, v = (jax.random.normal(jax.random.fold_in(key, i), (64, 3)) for i in range(3))
  t = jax.random.uniform(jax.random.fold_in(key, 3), (64,), minval=0.05, maxval=0.95)
  drift = lambda score: sde.reverse(lambda *_: score, probability_flow=True).sde(x, t)[0]  # noqa
  np.testing.assert_allclose(flows.score_from_velocity(sde, drift(s), x, t), s, rtol=2e-4,
                             atol=2e-4)
  np.testing.assert_allclose(drift(flows.score_from_velocity(sde, v, x, t)), v, rtol=2e-4,
                             atol=2e-4)


@pytest.mark.parametrize('name', ['rectified_flow', 'vp'])
def test_oracle_velocity_and_its_score_equal_the_gaussian_closed_form(name):
  sde = SDES[name]
  x = jax.random.normal(jax.random.PRNGKey(1), (7, 2)) * 2.0
  t = jnp.array([1e-3, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0])
  alpha, sigma, _, _ = gaussian_kernel(name, t)
  exact = gaussian_velocity(name)(x, t)
  np.testing.assert_allclose(GAUSSIAN.velocity_fn(sde)(x, t), exact, rtol=1e-4, atol=1e-4)
  score = -(x - alpha[:, None] * MU) / (alpha[:, None]**2 * C + sigma[:, None]**2)
  np.testing.assert_allclose(flows.velocity_score_fn(gaussian_velocity(name), sde)(x, t), score,
                             rtol=1e-4, atol=1e-4)
  if name == 'rectified_flow':  # at t = 1: v = x - E[x0], the score -x says nothing about it
    np.testing.assert_allclose(exact[-1], x[-1] - MU, atol=1e-6)


def test_posterior_mean_is_exact_at_pure_noise_and_tends_to_x_at_zero_noise():
  x = jax.random.normal(jax.random.PRNGKey(2), (5, 2))
  at_prior = GMM.posterior_mean(x, jnp.ones(5), RF)
  np.testing.assert_allclose(at_prior, np.tile(GMM.weights @ GMM.means, (5, 1)), atol=1e-6)
  np.testing.assert_allclose(GMM.posterior_mean(x, jnp.full(5, 1e-4), RF), x, atol=2e-3)


def test_guidance_mixes_the_velocities_and_keeps_them():
  def class_velocity(x, t, class_labels):
    return x * (1.0 + class_labels[:, None])  # label 0 (null): x, label 1: 2 x

  score_fn = flows.velocity_score_fn(class_velocity, RF)
  guided = guidance.guided_score_fn(score_fn, 1, 2.0, 0)
  x, t = jax.random.normal(jax.random.PRNGKey(3), (4, 2)), jnp.full(4, 0.4)
  np.testing.assert_allclose(guided.velocity(x, t), 3.0 * x, rtol=1e-6)  # (1 - w) x + w 2 x
  labels = lambda k: jnp.full(4, k)  # noqa: E731
  combined = guidance.combine(score_fn(x, t, class_labels=labels(1)),
                              score_fn(x, t, class_labels=labels(0)), 2.0)
  np.testing.assert_allclose(guided(x, t), combined, rtol=1e-5)


# The flow-matching loss --------------------------------------------------------------------------

def expected_loss_of_the_exact_velocity() -> float:
  """E|v* - u|^2 / d on the linear path = the mean over t ~ U(1e-5, 1) and the dimensions of
  Var(u | x(t)) = Var(u) - Cov(u, x)^2 / Var(x) = C + 1 - (t - (1 - t) C)^2 / ((1 - t)^2 C + t^2)
  (u = z - x0)."""
  values = [integrate.quad(lambda t: c + 1 - (t - (1 - t) * c)**2 / ((1 - t)**2 * c + t**2),
                           1e-5, 1.0)[0] / (1 - 1e-5) for c in C]
  return float(np.mean(values))


@pytest.mark.parametrize('name', ['rectified_flow', 'vp'])
def test_exact_velocity_minimises_the_flow_matching_loss_by_the_predicted_margin(name):
  sde, n = SDES[name], 100_000
  x0 = GAUSSIAN.sample(jax.random.PRNGKey(4), n)[0]
  delta = jnp.array([0.3, -0.2])
  exact = gaussian_velocity(name)
  loss = jax.jit(lambda velocity_fn: losses.flow_matching_loss(
      jax.random.PRNGKey(5), x0, velocity_fn, sde, reduce_mean=True), static_argnums=0)
  best = np.asarray(loss(exact), np.float64)
  perturbed = np.asarray(loss(lambda x, t, rng: exact(x, t) + delta), np.float64)
  # E|v - u|^2 = E|v - v*|^2 + E|v* - u|^2: the margin is mean(delta^2) = 0.065 per dimension
  # (measured: 0.0628 +- 0.0013 on the linear path, 0.0640 +- 0.0020 on the VP path).
  margin = perturbed - best
  assert abs(margin.mean() - 0.065) < 4 * margin.std() / np.sqrt(n)
  if name == 'rectified_flow':  # measured: 1.5459 +- 0.0056 against 1.5409
    assert abs(best.mean() - expected_loss_of_the_exact_velocity()) < 4 * best.std() / np.sqrt(n)


def test_config_loss_is_flow_matching_with_the_models_velocity_and_labels():
  config = helpers.tiny_config('rectified_flow')
  config.model.num_classes = 3
  config.training.label_dropout = 0.5
  sde = sde_lib.get_sde(config)
  model, variables = models.init_model(jax.random.PRNGKey(0), config, (2,))
  key, x0 = jax.random.PRNGKey(6), GMM.sample(jax.random.PRNGKey(7), 32)[0]
  labels = jnp.arange(32) % 3
  got = losses.get_loss_fn(config, sde, model, train=True, per_example=True)(
      variables['params'], key, x0, labels)
  key, drop_key = jax.random.split(key)
  dropped = losses.drop_labels(drop_key, labels, 0.5, 3)
  assert 0 < int(jnp.sum(dropped == 3)) < 32
  want = losses.flow_matching_loss(key, x0, models.get_velocity_fn(sde, model, variables), sde,
                                   reduce_mean=True, class_labels=dropped)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert isinstance(models.get_score_fn(sde, model, variables), flows.VelocityScore)


@pytest.mark.parametrize('edit,message', [
    ({'training.continuous': False}, 'training.continuous = False: a velocity model'),
    ({'training.likelihood_weighting': True},
     'training.likelihood_weighting = True does not apply'),
    ({'model.preconditioning': 'edm'}, "model.preconditioning = 'edm' does not combine"),
    ({'model.parameterization': 'epsilon'},
     r"model.parameterization = 'epsilon' is not supported; allowed: \['velocity'\]"),
    ({'training.sde': 'vesde', 'model.parameterization': 'velocity', 'model.scale_by_sigma': True,
      'model.embedding_type': 'fourier'}, 'model.scale_by_sigma = True does not apply'),
])
def test_combinations_without_a_flow_matching_loss_are_refused(edit, message):
  config = helpers.tiny_config('rectified_flow')
  for field, value in edit.items():
    section, name = field.split('.')
    config[section][name] = value
  with pytest.raises(ValueError, match=message):
    losses.get_loss_fn(config, sde_lib.get_sde(config), None, train=True)


def test_samplers_that_divide_by_alpha_refuse_the_flow():
  config = helpers.tiny_config('rectified_flow')
  for method in ('pc', 'ddim', 'dpm_solver', 'edm', 'consistency'):
    config.sampling.method = method
    with pytest.raises(ValueError, match=rf"sampling.method = '{method}' does not sample "
                                         r"training.sde = 'rectified_flow'.*'ode'"):
      sampling.get_sampler(config, RF)
  with pytest.raises(ValueError, match=r"grid samplers .* divides by alpha\(T\) = 0.*'ode'"):
    sampling.get_ddim_sampler(RF, num_steps=4)


# ODE sampling and likelihood from t = 1 ----------------------------------------------------------

def test_ode_from_t1_with_the_oracle_velocity_draws_the_mixture():
  sampler = sampling.get_ode_sampler(RF, sampling.ODESolver(), noise_removal=False, eps=EPS)
  score_fn = flows.velocity_score_fn(GMM.velocity_fn(RF), RF)
  samples, nfe = jax.jit(lambda key: sampler(key, score_fn, (2000, 2)))(jax.random.PRNGKey(8))
  oracle.assert_follows_mixture(samples, GMM.at_time(RF, EPS))
  assert 20 < float(nfe.mean()) < 200  # measured: 55


def test_dopri5_euler_and_noise_removal_against_the_exact_gaussian_flow():
  n = 64
  score_fn = flows.velocity_score_fn(GAUSSIAN.velocity_fn(RF), RF)
  z = start.prior_draws(RF, streams.sample_keys(jax.random.PRNGKey(9), 0, n), (n, 2))
  # x(t) = alpha MU + sqrt(V(t)) xi with V = alpha^2 C + sigma^2, V(1) = 1, alpha(1) = 0.
  exact = (1 - EPS) * MU + jnp.sqrt((1 - EPS)**2 * C + EPS**2) * z

  def run(solver, noise_removal=False):
    sampler = sampling.get_ode_sampler(RF, solver, noise_removal=noise_removal, eps=EPS)
    return jax.jit(lambda key: sampler(key, score_fn, (n, 2)))(jax.random.PRNGKey(9))

  samples, nfe = run(sampling.ODESolver(rtol=1e-6, atol=1e-6))
  np.testing.assert_allclose(samples, exact, atol=2e-4)
  assert 20 < float(nfe.mean()) < 200  # measured: 50
  # One Euler step, z - (1 - eps) v(z, 1) = eps z + (1 - eps) MU, then noise removal: the step
  # from eps to 0, x - eps (1 - eps) v(x, eps).
  denoised, nfe = run(sampling.ODESolver(solver='euler', num_steps=1), noise_removal=True)
  one_step = EPS * z + (1 - EPS) * MU
  velocity = gaussian_velocity('rectified_flow')(one_step, jnp.full(n, EPS))
  np.testing.assert_allclose(denoised, one_step - EPS * (1 - EPS) * velocity, atol=1e-5)
  np.testing.assert_array_equal(nfe, 2)


def test_likelihood_of_the_oracle_flow_is_the_mixtures_log_density():
  dim, eps, n = 2, 1e-5, 16
  gmm = oracle.mixture(dim)
  fn = likelihood.get_log_likelihood_fn(RF, solver=sampling.ODESolver(rtol=1e-6, atol=1e-6),
                                        divergence='exact', eps=eps)
  x = gmm.sample(jax.random.PRNGKey(dim), n)[0]
  score_fn = flows.velocity_score_fn(gmm.velocity_fn(RF), RF)
  logp, z, nfe = jax.jit(lambda x: fn(jax.random.PRNGKey(0), score_fn, x))(x)
  # p_T is the prior exactly: no correction of the reference. Measured: 2e-5 nats/dim.
  error_per_dim = np.abs(logp - gmm.log_prob(x, jnp.full(n, eps), RF)) / dim
  assert error_per_dim.max() < 1e-3, error_per_dim
  assert z.shape == x.shape and np.all(nfe > 20)


def test_guided_class_conditional_flow_samples_from_t1_with_guided_velocities():
  config = helpers.tiny_config('rectified_flow')
  config.model.num_classes = 3
  config.sampling.update(method='ode', ode_solver='euler', ode_steps=2, noise_removal=False,
                         guidance_scale=2.0)
  sde = sde_lib.get_sde(config)
  model, variables = models.init_model(jax.random.PRNGKey(0), config, (2,))
  key = jax.random.PRNGKey(15)
  samples, nfe = sampling.get_model_sampler(config, sde, model, (4, 2))(variables, key)
  np.testing.assert_array_equal(nfe, 2)  # 2 Euler steps of the guided velocity
  velocity_fn = models.get_velocity_fn(sde, model, variables)
  labels = jnp.arange(4) % 3  # sample k: class k mod 3

  def guided(x, t):  # (1 - w) v(x | null) + w v(x | class)
    return (-velocity_fn(x, t, class_labels=jnp.full(4, 3)) +
            2.0 * velocity_fn(x, t, class_labels=labels))

  x = start.prior_draws(sde, streams.sample_keys(key, 0, 4), (4, 2))
  dt = (EPS - 1.0) / 2
  for t in (1.0, 1.0 + dt):
    x = x + dt * guided(x, jnp.full(4, t))
  np.testing.assert_allclose(samples, x, rtol=1e-5, atol=1e-5)


# The driver --------------------------------------------------------------------------------------

def test_config_trains_and_evaluates_through_the_drivers(tmp_path):
  config = rectified_flow_config.get_config()
  config.training.update(batch_size=64, n_iters=2, n_jitted_steps=1, log_freq=1, eval_freq=2,
                         snapshot_freq=2, snapshot_freq_for_preemption=2,
                         snapshot_sampling=False)
  config.model.update(nf=16, num_layers=2)
  config.optim.warmup = 1
  config.eval.update(num_samples=64, batch_size=64, bpd_num_samples=64, begin_ckpt=1, end_ckpt=1)
  workdir = str(tmp_path)
  train.train(config, workdir)
  [report] = evaluate.evaluate(config, workdir)
  assert report['step'] == 2 and report['num_samples'] == 64 and report['bpd_num_values'] == 64
  for field in ('test_loss', 'bpd', 'energy_distance'):
    assert np.isfinite(report[field]), field
  run = trained.load(workdir)
  assert isinstance(run.sde, sde_lib.RectifiedFlow)
  assert isinstance(run.score_fn(), flows.VelocityScore)
