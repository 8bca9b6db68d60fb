"""DDIM (Song, Meng & Ermon 2021), deterministic (eta = 0) and stochastic (eta > 0), on every SDE.

One step from node t to the next node s < t, in the kernel's terms (see sampling.grid):

  x0 = x0_hat(x_t, t),   eps = (x_t - alpha_t x0) / sigma_t,
  x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z,
  c = eta sigma_s sqrt(1 - e^{2 (lam_t - lam_s)}).

This is DDIM's Eq. 12 with its sigma_t(eta) of Eq. 16 written for any alpha, sigma (for VP,
c^2 = eta^2 (1 - abar_s) / (1 - abar_t) (1 - abar_t / abar_s)). eta = 1 draws from the exact
posterior q(x_s | x_t, x0); eta = 0 is the first-order exponential integrator of the
probability-flow ODE (DPM-Solver-1).
"""
import jax
import jax.numpy as jnp
import numpy as np

from score_sde.sampling import grid, start, streams


def get_ddim_sampler(sde, *, num_steps=None, nfe=None, eta: float = 0.0,
                     schedule: str = 'time_uniform', rho: float = 7.0, eps: float = 1e-3,
                     denoise: bool = True, continuous: bool = True, t_start=None):
  """Returns sample(key, score_fn, shape, first_index=0, *, x_start=None, project=None) ->
  (samples of `shape`, nfe (int)).

  num_steps or nfe: the number of steps, or a budget of score evaluations (one per step, one
  more for `denoise`, which returns x0_hat at eps). schedule, rho: see grid.time_grid. Sample k
  draws all its noise from fold_in(key, k). `continuous=False` runs on a discrete model's steps.
  t_start (None: T): the run goes from t_start down to eps, from x_start, the state at t_start
  (None: the prior draws, only for t_start = T; see sampling.start). `project(keys, x, t) -> x`,
  if given, constrains the state at time t (B,) as in the PC sampler: it is applied to the
  initial state and after every step, keys (B,) per sample (score_sde.controllable).
  """
  if not 0.0 <= eta <= 1.0:
    raise ValueError(f'eta = {eta} must lie in [0, 1] (0: deterministic DDIM, 1: DDPM posterior).')
  steps = grid.resolve_steps(num_steps, nfe, 1, denoise, 'ddim')
  t_start = start.start_time(sde, t_start, eps)
  nodes = grid.time_grid(sde, steps, eps, schedule, rho=rho, continuous=continuous,
                         t_start=t_start)
  lam = nodes.log_snrs
  noise_std = eta * nodes.sigmas[1:] * np.sqrt(-np.expm1(2.0 * (lam[:-1] - lam[1:])))
  eps_scale = np.sqrt(np.maximum(nodes.sigmas[1:]**2 - noise_std**2, 0.0))
  times, score_times, alphas, sigmas, noise_std, eps_scale = grid.as_float32(
      nodes.times, nodes.score_times, nodes.alphas, nodes.sigmas, noise_std, eps_scale)

  def sample(key, score_fn, shape, first_index=0, *, x_start=None, project=None):
    keys = streams.sample_keys(key, first_index, shape[0])

    def constrain(i, x):  # the state at node i
      if project is None:
        return x
      return project(streams.fold_in_each(streams.fold_in_each(keys, i), 1), x,
                     jnp.full(shape[0], times[i]))

    def step(i, x):
      x0 = grid.data_estimate(score_fn, x, score_times[i], alphas[i], sigmas[i])
      x_next = alphas[i + 1] * x0 + eps_scale[i] * (x - alphas[i] * x0) / sigmas[i]
      if eta > 0:
        x_next = x_next + noise_std[i] * streams.normal_like(streams.fold_in_each(keys, i + 1), x)
      return constrain(i + 1, x_next)

    x = constrain(0, start.initial_state(sde, keys, shape, x_start, t_start))
    x = jax.lax.fori_loop(0, steps, step, x)
    if denoise:
      x = grid.data_estimate(score_fn, x, score_times[-1], alphas[-1], sigmas[-1])
    return x, steps + int(denoise)

  return sample
