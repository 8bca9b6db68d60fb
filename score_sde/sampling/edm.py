"""EDM's second-order Heun sampler with optional stochastic churn (Karras et al. 2022,
Algorithm 2) on every SDE.

EDM writes the probability-flow ODE in the scaled state x~ = x / alpha and noise level
sigma~ = sigma / alpha = exp(-lambda) (their Eq. 4 with s(t) = alpha, sigma(t) = sigma~):

  dx~ / dsigma~ = (x~ - D(x~; sigma~)) / sigma~,   D(x~; sigma~) = x0_hat(alpha x~, t),

so the same sampler runs on VP, sub-VP and VE. Step i (sigma~_i -> sigma~_{i+1}): with churn,
gamma_i = min(S_churn / n, sqrt(2) - 1) where S_min <= sigma~_i <= S_max (else 0), noise raises
sigma~_i to sigma^_i = (1 + gamma_i) sigma~_i (x^ = x~ + sqrt(sigma^^2 - sigma~_i^2) S_noise z),
then one Heun step goes from sigma^_i to sigma~_{i+1}. The grid ends at eps > 0, so every step is
a Heun step (2 evaluations); `denoise` returns D at eps (EDM's last Euler step to sigma = 0).
"""
import jax
import numpy as np

from score_sde.sampling import grid, start, streams


def _churned_nodes(sde, nodes, gamma, continuous):
  """The nodes at sigma^_i = (1 + gamma_i) sigma~_i (n,), never before node i nor after T."""
  sig = nodes.sigmas[:-1] / nodes.alphas[:-1]
  times = np.where(gamma > 0, grid.time_of_log_snr(sde, -np.log(sig * (1.0 + gamma))),
                   nodes.times[:-1])
  hat = grid.nodes_at(sde, np.clip(times, nodes.times[:-1], sde.T), continuous)
  later = hat.times >= nodes.times[:-1]  # a discrete model's snap may round down: keep node i
  pick = lambda a, b: np.where(later, a, b)  # noqa: E731
  return grid.Nodes(pick(hat.times, nodes.times[:-1]),
                    pick(hat.score_times, nodes.score_times[:-1]),
                    pick(hat.alphas, nodes.alphas[:-1]), pick(hat.sigmas, nodes.sigmas[:-1]))


def get_edm_sampler(sde, *, num_steps=None, nfe=None, schedule: str = 'rho', rho: float = 7.0,
                    s_churn: float = 0.0, s_min: float = 0.0, s_max: float = float('inf'),
                    s_noise: float = 1.0, eps: float = 1e-3, denoise: bool = True,
                    continuous: bool = True, t_start=None):
  """Returns sample(key, score_fn, shape, first_index=0, *, x_start=None) -> (samples of `shape`,
  nfe (int)).

  num_steps or nfe: the number of Heun steps, or a budget of score evaluations (two per step,
  one more for `denoise`). schedule, rho: see grid.time_grid (default EDM's rho = 7). s_churn,
  s_min, s_max, s_noise: EDM's churn (s_min, s_max in units of sigma~); s_churn = 0 is the
  deterministic sampler. Sample k draws all its noise from fold_in(key, k). t_start (None: T):
  the run goes from t_start down to eps, from x_start, the state at t_start (None: the prior
  draws, only for t_start = T; see sampling.start); churn may raise the noise above t_start's.
  """
  for name, value in (('s_churn', s_churn), ('s_min', s_min), ('s_noise', s_noise)):
    if not value >= 0:
      raise ValueError(f'{name} = {value} must be >= 0.')
  if not s_max >= s_min:
    raise ValueError(f's_max = {s_max} must be >= s_min = {s_min}.')
  steps = grid.resolve_steps(num_steps, nfe, 2, denoise, 'edm')
  t_start = start.start_time(sde, t_start, eps)
  nodes = grid.time_grid(sde, steps, eps, schedule, rho=rho, continuous=continuous,
                         t_start=t_start)
  sig = nodes.sigmas / nodes.alphas
  in_range = (sig[:-1] >= s_min) & (sig[:-1] <= s_max)
  gamma = np.where(in_range, min(s_churn / steps, np.sqrt(2.0) - 1.0), 0.0)
  hat = _churned_nodes(sde, nodes, gamma, continuous)
  hat_sig = hat.sigmas / hat.alphas
  churn_std = s_noise * np.sqrt(np.maximum(hat_sig**2 - sig[:-1]**2, 0.0))
  (node_t, node_a, node_s, node_sig, hat_t, hat_a, hat_s, hat_sig, churn_std) = grid.as_float32(
      nodes.score_times, nodes.alphas, nodes.sigmas, sig, hat.score_times, hat.alphas,
      hat.sigmas, hat_sig, churn_std)

  def denoised(score_fn, x_scaled, t, alpha, sigma):
    return grid.data_estimate(score_fn, alpha * x_scaled, t, alpha, sigma)

  def sample(key, score_fn, shape, first_index=0, *, x_start=None):
    keys = streams.sample_keys(key, first_index, shape[0])

    def step(i, x):
      if s_churn > 0:
        x = x + churn_std[i] * streams.normal_like(streams.fold_in_each(keys, i + 1), x)
      slope = (x - denoised(score_fn, x, hat_t[i], hat_a[i], hat_s[i])) / hat_sig[i]
      dsig = node_sig[i + 1] - hat_sig[i]
      x_euler = x + dsig * slope
      slope_next = (x_euler - denoised(score_fn, x_euler, node_t[i + 1], node_a[i + 1],
                                       node_s[i + 1])) / node_sig[i + 1]
      return x + dsig * 0.5 * (slope + slope_next)

    x = start.initial_state(sde, keys, shape, x_start, t_start) / node_a[0]
    x = jax.lax.fori_loop(0, steps, step, x)
    if denoise:
      return denoised(score_fn, x, node_t[-1], node_a[-1], node_s[-1]), 2 * steps + 1
    return node_a[-1] * x, 2 * steps

  return sample
