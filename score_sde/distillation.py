"""Consistency distillation and consistency training objectives (Song et al. 2023, Eq. 7 and 10;
Song & Dhariwal 2023), in EDM's units (x_sigma = x_0 + sigma z; see score_sde.consistency).

For a pair of adjacent levels sigma_n < sigma_{n+1} and data x_0, both compare the student at
x_{n+1} = x_0 + sigma_{n+1} z with a target network at a point x_n of the same trajectory,

  lambda(sigma_n) d(f_theta(x_{n+1}, sigma_{n+1}), stopgrad f_target(x_n, sigma_n)),

where distillation (CD) gets x_n from one step of the teacher's probability-flow ODE,
dx / dsigma = (x - D(x, sigma)) / sigma, from sigma_{n+1} down to sigma_n (`teacher_step`), and
training (CT) takes x_n = x_0 + sigma_n z, the same noise at the lower level.
"""
import jax
import jax.numpy as jnp

from score_sde.sde import expand_to

TEACHER_SOLVERS = ('euler', 'heun', 'dpm_solver')


def teacher_step(denoiser, x, sigma, sigma_next, solver: str = 'heun', **kwargs):
  """x at sigma_next after one step of the probability-flow ODE from (x, sigma): x (B, ...),
  sigma, sigma_next (B,); denoiser(x, sigma, **kwargs) -> D like x.

  'euler': x + (sigma_next - sigma) d(x, sigma), d = (x - D) / sigma (EDM Alg. 1 without the
  correction; in these units it is also DDIM and first-order DPM-Solver++); 'heun': Euler
  followed by the trapezoidal correction with d at sigma_next (EDM Alg. 1, the step CM distils
  with); 'dpm_solver': DPM-Solver++(2S) (Lu et al. 2022, Alg. 1 with r = 1/2), a first-order
  step to the log-midpoint sigma_mid = sqrt(sigma sigma_next), then (sigma_next / sigma) x +
  (1 - sigma_next / sigma) D(x_mid, sigma_mid). Euler evaluates the denoiser once, the others
  twice."""
  if solver not in TEACHER_SOLVERS:
    raise ValueError(f'Teacher solver {solver!r} is not supported; allowed: '
                     f'{list(TEACHER_SOLVERS)}.')
  s, s_next = expand_to(sigma, x), expand_to(sigma_next, x)
  denoised = denoiser(x, sigma, **kwargs)
  if solver == 'dpm_solver':
    mid = jnp.sqrt(sigma * sigma_next)
    to_mid, to_next = expand_to(mid, x) / s, s_next / s
    x_mid = to_mid * x + (1.0 - to_mid) * denoised
    return to_next * x + (1.0 - to_next) * denoiser(x_mid, mid, **kwargs)
  slope = (x - denoised) / s
  euler = x + (s_next - s) * slope
  if solver == 'euler':
    return euler
  slope_next = (euler - denoiser(euler, sigma_next, **kwargs)) / s_next
  return x + (s_next - s) * 0.5 * (slope + slope_next)


def distillation_pair(denoiser, x0, noise, sigma, sigma_next, solver: str = 'heun', **kwargs):
  """CD's student input x_{n+1} = x0 + sigma_next z and target input x_n, one teacher step
  below it (stopped gradients): arrays like x0 (B, ...), sigma < sigma_next (B,)."""
  x_next = x0 + expand_to(sigma_next, x0) * noise
  x = jax.lax.stop_gradient(teacher_step(denoiser, x_next, sigma_next, sigma, solver, **kwargs))
  return x_next, x


def training_pair(x0, noise, sigma, sigma_next):
  """CT's student input x0 + sigma_next z and target input x0 + sigma z (the same z)."""
  return x0 + expand_to(sigma_next, x0) * noise, x0 + expand_to(sigma, x0) * noise


def consistency_loss(student, target, pair, sigma, sigma_next, distance, weight=None):
  """Per-example consistency losses (B,): weight * distance(student(x_{n+1}, sigma_next),
  stopgrad target(x_n, sigma)) for pair = (x_{n+1}, x_n) (distillation_pair or training_pair);
  student, target: consistency functions f(x, sigma); distance(a, b) -> (B,); weight (B,) or
  None (1)."""
  x_next, x = pair
  losses = distance(student(x_next, sigma_next), jax.lax.stop_gradient(target(x, sigma)))
  return losses if weight is None else weight * losses


def squared_l2(a, b):
  """|a - b|^2 per example, (B,): CM's L2 distance."""
  return jnp.sum(jnp.square(a - b).reshape(a.shape[0], -1), axis=-1)


def level_of_time(sde, t):
  """The EDM noise level sigma(t) / alpha(t) of the SDE's kernel at times t (B,)."""
  mean, std = sde.marginal_prob(jnp.ones((jnp.shape(t)[0], 1)), t)
  return std / mean[:, 0]


def time_of_level(sde, sigma, iterations: int = 40):
  """The time t in [0, T] whose EDM level sigma(t) / alpha(t) is `sigma` (B,): bisection on the
  increasing log level, jittable (clipped to the ends outside the SDE's levels)."""
  target = jnp.log(sigma)
  low, high = jnp.zeros_like(sigma), jnp.full_like(sigma, sde.T)

  def halve(_, bounds):
    low, high = bounds
    middle = 0.5 * (low + high)
    below = jnp.log(level_of_time(sde, middle)) < target
    return jnp.where(below, middle, low), jnp.where(below, high, middle)

  low, high = jax.lax.fori_loop(0, iterations, halve, (low, high))
  return 0.5 * (low + high)


def score_denoiser(score_fn, sde):
  """A denoiser D(x, sigma, **kwargs) in EDM units from a score_fn(x, t, **kwargs) of the SDE's
  marginals (a trained run's or an analytic one): at the time t of level sigma, with x(t) =
  alpha x, D = (x(t) + sigma(t)^2 s(x(t), t)) / alpha (Tweedie's formula; the inverse of
  edm.denoiser_score_fn)."""

  def denoise(x, sigma, **kwargs):
    t = time_of_level(sde, sigma)
    mean, std = sde.marginal_prob(jnp.ones((x.shape[0], 1)), t)
    alpha, std = expand_to(mean[:, 0], x), expand_to(std, x)
    x_t = alpha * x
    return (x_t + std**2 * score_fn(x_t, t, **kwargs)) / alpha

  return denoise
