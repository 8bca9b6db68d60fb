"""DPM-Solver++ (Lu et al. 2022, "DPM-Solver++: Fast solver for guided sampling of diffusion
probabilistic models") on every SDE: exponential integrators of the probability-flow ODE in its
data-prediction form,

  x_s = (sigma_s / sigma_t) x_t + sigma_s int_{lam_t}^{lam_s} e^lam x0_hat(x_lam, lam) dlam,

with x0_hat (Tweedie's formula) expanded in lambda = log(alpha / sigma) (see sampling.grid). With
h = lam_s - lam_t and phi_1(h) = expm1(-h):

  '2M' (multistep, their Algorithm 2): one evaluation per step; the slope of x0_hat in lambda
       comes from the previous step's estimate: D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1},
       r = h_{i-1} / h_i; x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} phi_1(h_i) D.
       The first step is first order (DDIM).
  '3M' (multistep, third order): one evaluation per step; x0_hat is expanded to second order
       through the estimates of the two previous steps (divided differences in lambda, in units
       of h: D1 ~ h x0', D2 ~ h^2 x0'' / 2), integrated exactly against e^lam:
       x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} (phi_1 x0_i - phi_2 D1 + 2 phi_3 D2),
       phi_2 = phi_1 / h + 1, phi_3 = phi_2 / h - 1/2. Step 0 is first order, step 1 second.
  '2S' (single-step, their Algorithm 1): two evaluations per step, the second at the point a
       fraction r = 1/2 of the way in lambda; D = (1 - 1/(2r)) x0(x_t) + 1/(2r) x0(u).
  '3S' (single-step, third order; DPM-Solver-3 of Lu et al. 2022a in data prediction): three
       evaluations per step, at fractions r1 = 1/3 and r2 = 2/3 of the way in lambda.
"""
import jax
import jax.numpy as jnp
import numpy as np

from score_sde.sampling import grid, start, streams

EVALS_PER_STEP = {'2M': 1, '3M': 1, '2S': 2, '3S': 3}


def _fractions(nodes, points, name):
  """Fractions r (n - 1,) of each step's lambda increment at which `points` lie."""
  lam = nodes.log_snrs
  r = (points.log_snrs - lam[:-1]) / np.diff(lam)
  if np.any(r <= 0) or np.any(r >= 1):
    raise ValueError(f'{name}: the intermediate points of some step coincide with its ends on '
                     "this discrete model's steps; use fewer steps.")
  return r


def _multistep_2m(nodes):
  """Per-step coefficients of 2M: x_{i+1} = a x_i + b ((1 + w) x0_i - w x0_{i-1})."""
  h = np.diff(nodes.log_snrs)
  w = np.concatenate([[0.0], h[1:] / (2.0 * h[:-1])])  # 1 / (2 r_i), 0 on the first step
  return nodes.sigmas[1:] / nodes.sigmas[:-1], -nodes.alphas[1:] * np.expm1(-h), w


def _multistep_3m(nodes):
  """Per-step coefficients of 3M: with d0 = (x0_i - x0_{i-1}) / r0, d1 = (x0_{i-1} - x0_{i-2}) / r1
  (r0, r1 the previous two lambda increments over this one), D1 = d0 + k (d0 - d1) and
  D2 = (d0 - d1) / (r0 + r1): x_{i+1} = a x_i + c0 x0_i + c1 D1 + c2 D2. Steps 0 and 1 drop the
  terms they have no history for (c1 = c2 = 0, then c2 = k = 0)."""
  h = np.diff(nodes.log_snrs)
  n = len(h)
  phi_1 = np.expm1(-h)
  phi_2 = phi_1 / h + 1.0
  phi_3 = phi_2 / h - 0.5
  alpha = nodes.alphas[1:]
  r0, r1 = np.ones(n), np.ones(n)
  r0[1:] = h[:-1] / h[1:]
  r1[2:] = h[:-2] / h[2:]
  k = np.where(np.arange(n) >= 2, r0 / (r0 + r1), 0.0)
  c1 = np.where(np.arange(n) >= 1, alpha * phi_2, 0.0)
  c2 = np.where(np.arange(n) >= 2, -2.0 * alpha * phi_3, 0.0)
  return (nodes.sigmas[1:] / nodes.sigmas[:-1], -alpha * phi_1, c1, c2, 1.0 / r0, 1.0 / r1, k,
          1.0 / (r0 + r1))


def get_dpm_solver_sampler(sde, *, variant: str = '2M', num_steps=None, nfe=None,
                           schedule: str = 'logsnr', rho: float = 7.0, eps: float = 1e-3,
                           denoise: bool = True, continuous: bool = True, t_start=None):
  """Returns sample(key, score_fn, shape, first_index=0, *, x_start=None) -> (samples of `shape`,
  nfe (int)).

  variant: '2M' | '3M' | '2S' | '3S'. num_steps or nfe: the number of steps, or a budget of score
  evaluations (EVALS_PER_STEP[variant] per step, one more for `denoise`, which returns x0_hat at
  eps). schedule, rho: see grid.time_grid. The prior draw of sample k comes from
  fold_in(key, k), as in the other samplers, so samplers compare on the same noise. t_start
  (None: T): the run goes from t_start down to eps, from x_start, the state at t_start (None:
  the prior draws, only for t_start = T; see sampling.start).
  """
  if variant not in EVALS_PER_STEP:
    raise ValueError(f'Unknown DPM-Solver++ variant {variant!r}; allowed: {list(EVALS_PER_STEP)}.')
  name = f'dpm_solver {variant}'
  steps = grid.resolve_steps(num_steps, nfe, EVALS_PER_STEP[variant], denoise, name)
  t_start = start.start_time(sde, t_start, eps)
  nodes = grid.time_grid(sde, steps, eps, schedule, rho=rho, continuous=continuous,
                         t_start=t_start)
  h = np.diff(nodes.log_snrs)
  node_t, node_a, node_s = grid.as_float32(nodes.score_times, nodes.alphas, nodes.sigmas)

  def x0_at(score_fn, x, i):
    return grid.data_estimate(score_fn, x, node_t[i], node_a[i], node_s[i])

  if variant == '2M':
    x_coeff, d_coeff, w = grid.as_float32(*_multistep_2m(nodes))

    def solve(score_fn, x):
      def step(i, carry):
        x, x0_previous = carry
        x0 = x0_at(score_fn, x, i)
        return x_coeff[i] * x + d_coeff[i] * ((1 + w[i]) * x0 - w[i] * x0_previous), x0

      return jax.lax.fori_loop(0, steps, step, (x, jnp.zeros_like(x)))[0]

  elif variant == '3M':
    a, c0, c1, c2, inv_r0, inv_r1, k, inv_r01 = grid.as_float32(*_multistep_3m(nodes))

    def solve(score_fn, x):
      def step(i, carry):
        x, m1, m2 = carry
        m0 = x0_at(score_fn, x, i)
        d0, d1 = (m0 - m1) * inv_r0[i], (m1 - m2) * inv_r1[i]
        slope, curvature = d0 + k[i] * (d0 - d1), (d0 - d1) * inv_r01[i]
        return a[i] * x + c0[i] * m0 + c1[i] * slope + c2[i] * curvature, m0, m1

      zeros = jnp.zeros_like(x)
      return jax.lax.fori_loop(0, steps, step, (x, zeros, zeros))[0]

  elif variant == '2S':
    mid = grid.midpoints(sde, nodes, 0.5, continuous)
    r = _fractions(nodes, mid, name)
    coeffs = grid.as_float32(
        mid.score_times, mid.alphas, mid.sigmas, mid.sigmas / nodes.sigmas[:-1],
        -mid.alphas * np.expm1(-r * h), nodes.sigmas[1:] / nodes.sigmas[:-1],
        -nodes.alphas[1:] * np.expm1(-h), 1.0 / (2.0 * r))

    def solve(score_fn, x):
      mid_t, mid_a, mid_s, u_x, u_d, x_coeff, d_coeff, w = coeffs

      def step(i, x):
        x0 = x0_at(score_fn, x, i)
        u = u_x[i] * x + u_d[i] * x0
        x0_mid = grid.data_estimate(score_fn, u, mid_t[i], mid_a[i], mid_s[i])
        return x_coeff[i] * x + d_coeff[i] * ((1 - w[i]) * x0 + w[i] * x0_mid)

      return jax.lax.fori_loop(0, steps, step, x)

  else:  # '3S'
    first, second = (grid.midpoints(sde, nodes, f, continuous) for f in (1 / 3, 2 / 3))
    r1, r2 = _fractions(nodes, first, name), _fractions(nodes, second, name)
    phi_1 = np.expm1(-h)
    phi_2 = phi_1 / h + 1.0
    phi_22 = np.expm1(-r2 * h) / (r2 * h) + 1.0
    to_s = 1.0 / nodes.sigmas[:-1]
    coeffs = grid.as_float32(
        first.score_times, first.alphas, first.sigmas,
        second.score_times, second.alphas, second.sigmas,
        first.sigmas * to_s, -first.alphas * np.expm1(-r1 * h),
        second.sigmas * to_s, -second.alphas * np.expm1(-r2 * h),
        r2 / r1 * second.alphas * phi_22,
        nodes.sigmas[1:] * to_s, -nodes.alphas[1:] * phi_1, nodes.alphas[1:] * phi_2 / r2)

    def solve(score_fn, x):
      (t1, a1, s1, t2, a2, s2, x1_x, x1_0, x2_x, x2_0, x2_d, x_x, x_0, x_d) = coeffs

      def step(i, x):
        m0 = x0_at(score_fn, x, i)
        m1 = grid.data_estimate(score_fn, x1_x[i] * x + x1_0[i] * m0, t1[i], a1[i], s1[i])
        x2 = x2_x[i] * x + x2_0[i] * m0 + x2_d[i] * (m1 - m0)
        m2 = grid.data_estimate(score_fn, x2, t2[i], a2[i], s2[i])
        return x_x[i] * x + x_0[i] * m0 + x_d[i] * (m2 - m0)

      return jax.lax.fori_loop(0, steps, step, x)

  def sample(key, score_fn, shape, first_index=0, *, x_start=None):
    keys = streams.sample_keys(key, first_index, shape[0])
    x = solve(score_fn, start.initial_state(sde, keys, shape, x_start, t_start))
    if denoise:
      x = x0_at(score_fn, x, steps)
    return x, steps * EVALS_PER_STEP[variant] + int(denoise)

  return sample
