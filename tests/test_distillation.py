"""Consistency distillation and training objectives: the teacher's ODE steps against EDM's
Euler / Heun formulas written out in numpy, the exact probability-flow map of Gaussian data, and
the losses against their definitions (Song et al. 2023, Eq. 7 and 10)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import distillation

MEAN, STD = np.array([1.0, -2.0]), 0.5


def nonlinear_denoiser(x, sigma):
  return jnp.tanh(x) * (sigma / (1.0 + sigma))[:, None]


def gaussian_denoiser(x, sigma):
  """E[x0 | x_sigma] of data N(MEAN, STD^2 I)."""
  return MEAN + (x - MEAN) * (STD**2 / (STD**2 + sigma**2))[:, None]


def exact_flow(x, sigma, sigma_next):
  """The probability-flow map of Gaussian data from level sigma to sigma_next."""
  return MEAN + (x - MEAN) * (np.sqrt(STD**2 + sigma_next**2) / np.sqrt(STD**2 + sigma**2))[:, None]


X = np.array([[0.3, -1.2], [2.0, 0.5], [-0.7, 3.0]])
SIGMA, SIGMA_NEXT = np.array([1.0, 0.5, 4.0]), np.array([0.8, 0.3, 2.5])


def test_teacher_steps_are_the_euler_heun_and_dpm_solver_formulas():
  def d_np(x, s):
    return np.tanh(x) * (s / (1 + s))[:, None]

  h = (SIGMA_NEXT - SIGMA)[:, None]
  slope = (X - d_np(X, SIGMA)) / SIGMA[:, None]
  euler = X + h * slope
  slope_next = (euler - d_np(euler, SIGMA_NEXT)) / SIGMA_NEXT[:, None]
  heun = X + h * (slope + slope_next) / 2
  mid = np.sqrt(SIGMA * SIGMA_NEXT)
  to_mid, to_next = (mid / SIGMA)[:, None], (SIGMA_NEXT / SIGMA)[:, None]
  x_mid = to_mid * X + (1 - to_mid) * d_np(X, SIGMA)
  dpm = to_next * X + (1 - to_next) * d_np(x_mid, mid)
  for solver, expected in (('euler', euler), ('heun', heun), ('dpm_solver', dpm)):
    got = distillation.teacher_step(nonlinear_denoiser, jnp.asarray(X), jnp.asarray(SIGMA),
                                    jnp.asarray(SIGMA_NEXT), solver)
    np.testing.assert_allclose(got, expected, rtol=1e-5, err_msg=solver)
  with pytest.raises(ValueError, match="'rk4' is not supported"):
    distillation.teacher_step(nonlinear_denoiser, X, SIGMA, SIGMA_NEXT, 'rk4')


def test_the_second_order_steps_track_the_exact_flow_far_better_than_euler():
  exact = exact_flow(X, SIGMA, SIGMA_NEXT)
  errors = {solver: np.abs(np.asarray(distillation.teacher_step(
      gaussian_denoiser, jnp.asarray(X), jnp.asarray(SIGMA), jnp.asarray(SIGMA_NEXT), solver))
      - exact).max() for solver in distillation.TEACHER_SOLVERS}
  assert max(errors['heun'], errors['dpm_solver']) < errors['euler'] / 4, errors  # 5x, 9x


def test_the_exact_consistency_function_has_near_zero_distillation_loss():
  def exact_f(x, sigma):  # the flow map down to sigma_min = 0.002
    return exact_flow(x, sigma, jnp.full_like(sigma, 0.002))

  def perturbed_f(x, sigma):
    return 1.05 * exact_f(x, sigma)

  key = jax.random.PRNGKey(0)
  x0 = MEAN + STD * jax.random.normal(key, (256, 2))
  noise = jax.random.normal(jax.random.fold_in(key, 1), (256, 2))
  sigma = jnp.full(256, 1.0)
  sigma_next = jnp.full(256, 1.1)
  pair = distillation.distillation_pair(gaussian_denoiser, x0, noise, sigma, sigma_next)
  np.testing.assert_allclose(pair[0], x0 + 1.1 * noise, rtol=1e-6)
  loss = lambda f: float(distillation.consistency_loss(  # noqa: E731
      f, exact_f, pair, sigma, sigma_next, distillation.squared_l2).mean())
  assert loss(exact_f) < 1e-6 < 1e-3 * loss(perturbed_f), (loss(exact_f), loss(perturbed_f))


def test_training_pairs_share_the_noise_and_only_the_student_gets_gradients():
  x0, noise = jnp.asarray(X), jnp.asarray(X[::-1])
  sigma, sigma_next = jnp.asarray(SIGMA_NEXT), jnp.asarray(SIGMA)
  x_next, x = distillation.training_pair(x0, noise, sigma, sigma_next)
  np.testing.assert_allclose(x_next, X + SIGMA[:, None] * X[::-1], rtol=1e-6)
  np.testing.assert_allclose(x, X + SIGMA_NEXT[:, None] * X[::-1], rtol=1e-6)
  weight = jnp.asarray([1.0, 2.0, 3.0])

  def loss(theta):
    f = lambda y, s: theta * y  # noqa: E731  (student and target share theta)
    return distillation.consistency_loss(f, f, (x_next, x), sigma, sigma_next,
                                         distillation.squared_l2, weight).sum()

  theta = 0.7
  # d/dtheta sum_b w_b |theta x_next - stop(theta x)|^2 = sum_b 2 w_b <theta (x_next - x), x_next>
  expected = np.sum(2 * np.asarray(weight)[:, None] * (theta * np.asarray(x_next - x))
                    * np.asarray(x_next))
  np.testing.assert_allclose(jax.grad(loss)(theta), expected, rtol=1e-5)
