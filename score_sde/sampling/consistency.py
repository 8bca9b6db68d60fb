"""Consistency sampling (Song et al. 2023, "Consistency models", Algorithm 1) on every SDE here.

In EDM's units (x~ = x / alpha_t at the level sigma~ = sigma_t / alpha_t), with f the
consistency function and levels tau_1 > tau_2 > ... (none for one step):

  x0 = f(x_T, T);   for each tau_n:  x0 = f(x0 + sqrt(tau_n^2 - sigma_min^2) z_n, tau_n).

f is read off the score as its data estimate x0_hat = (x + sigma_t^2 s(x, t)) / alpha_t, which
for a student wrapped into a score (edm.denoiser_score_fn) is exactly its f; so a guided score,
a latent model or an analytic consistency function work as with the other samplers.
"""
import jax
import numpy as np

from score_sde.sampling import grid, start, streams


def get_consistency_sampler(sde, levels=(), *, sigma_min: float = 0.002, t_start=None):
  """Returns sample(key, score_fn, shape, first_index=0, *, x_start=None) -> (samples of
  `shape`, nfe = 1 + len(levels)).

  levels: the EDM noise levels of the steps after the first, decreasing, each between
  sigma_min and the SDE's level at the start. Sample k draws all its noise from fold_in(key, k).
  t_start (None: T): the run starts there from x_start (see sampling.start).
  """
  t_start = start.start_time(sde, t_start, 0.0)
  alpha_start, sigma_start = grid.alpha_sigma(sde, t_start)
  start_level = float(sigma_start / alpha_start)
  levels = np.asarray(levels, np.float64).reshape(-1)
  if levels.size and not (np.all(np.diff(levels) < 0) and levels[0] < start_level
                          and levels[-1] > sigma_min):
    raise ValueError(f'Consistency levels {levels.tolist()} must decrease strictly and lie in '
                     f'(sigma_min, start level) = ({sigma_min}, {start_level:.6g}).')
  times = grid.time_of_log_snr(sde, -np.log(levels))
  alphas, sigmas = grid.alpha_sigma(sde, times)
  noise_scales = np.sqrt(levels**2 - sigma_min**2)
  times, alphas, sigmas, noise_scales = grid.as_float32(times, alphas, sigmas, noise_scales)
  first = grid.as_float32(t_start, alpha_start, sigma_start)

  def sample(key, score_fn, shape, first_index=0, *, x_start=None):
    keys = streams.sample_keys(key, first_index, shape[0])
    x = start.initial_state(sde, keys, shape, x_start, t_start)
    x0 = grid.data_estimate(score_fn, x, *first)

    def step(n, x0):
      noise = streams.normal_like(streams.fold_in_each(keys, n + 1), x0)
      x = alphas[n] * (x0 + noise_scales[n] * noise)  # the SDE's state at times[n]
      return grid.data_estimate(score_fn, x, times[n], alphas[n], sigmas[n])

    if levels.size:
      x0 = jax.lax.fori_loop(0, levels.size, step, x0)
    return x0, 1 + levels.size

  return sample
