"""Noise schedules and the time grids of the fast samplers (DDIM, DPM-Solver++, EDM).

Every SDE here perturbs data as x(t) = alpha(t) x(0) + sigma(t) z (`SDE.marginal_prob`):
  VP:     alpha = exp(lmc(t)),  sigma = sqrt(1 - alpha^2)
  sub-VP: alpha = exp(lmc(t)),  sigma = 1 - alpha^2
  VE:     alpha = 1,            sigma = sigma(t)
(lmc: `log_mean_coeff`). The fast samplers are written in these terms, with the log
signal-to-noise ratio lambda(t) = log(alpha / sigma) (Lu et al. 2022, Sec. 2) and the denoiser
x0_hat(x, t) = (x + sigma^2 s(x, t)) / alpha (Tweedie's formula), so one implementation serves
every SDE. Coefficients are computed here in float64 numpy, once per sampler. The rectified flow
(alpha = 1 - t) is refused: its alpha(T) = 0.

A model trained on discrete steps (`continuous=False`: DDPM, SMLD) knows only its own noise
levels: its grid nodes snap to its steps t_i = i T / (N - 1), with the chain's own alpha_i and
sigma_i (DDPM: sqrt(alphabar_i), sqrt(1 - alphabar_i); SMLD: sigma_i), and the score is asked at
a time inside step i.
"""
import dataclasses

import jax.numpy as jnp
import numpy as np

from score_sde import sde as sde_lib
from score_sde.sampling import start

SCHEDULES = ('time_uniform', 'logsnr', 'quadratic', 'rho')


def alpha_sigma(sde, t):
  """alpha(t) and sigma(t) of the continuous perturbation kernel, float64 arrays like t."""
  t = np.asarray(t, np.float64)
  if isinstance(sde, sde_lib.VESDE):
    return np.ones_like(t), sde.sigma(t)
  if isinstance(sde, (sde_lib.VPSDE, sde_lib.subVPSDE)):
    lmc = sde.log_mean_coeff(t)
    variance = -np.expm1(2.0 * lmc)
    return np.exp(lmc), (np.sqrt(variance) if isinstance(sde, sde_lib.VPSDE) else variance)
  if isinstance(sde, sde_lib.RectifiedFlow):
    raise ValueError("The grid samplers ('ddim', 'dpm_solver', 'edm', 'consistency') do not run "
                     'on the rectified flow: their data estimate x0_hat = (x + sigma^2 s) / alpha '
                     "divides by alpha(T) = 0. Use the probability-flow ODE, sampling.method = "
                     "'ode'.")
  raise ValueError(f'No noise schedule for SDE {type(sde).__name__}; '
                   'supported: VPSDE, subVPSDE, VESDE.')


def log_snr(sde, t):
  """lambda(t) = log(alpha(t) / sigma(t)), decreasing in t; float64 like t."""
  alpha, sigma = alpha_sigma(sde, t)
  return np.log(alpha) - np.log(sigma)


def time_of_log_snr(sde, lam, t_min: float = 1e-9):
  """The time t in [t_min, T] with lambda(t) = lam (bisection; clipped to the interval)."""
  lam = np.asarray(lam, np.float64)
  low, high = np.full_like(lam, t_min), np.full_like(lam, sde.T)
  for _ in range(100):
    middle = 0.5 * (low + high)
    above = log_snr(sde, middle) > lam  # lambda decreases: the root lies later
    low, high = np.where(above, middle, low), np.where(above, high, middle)
  return 0.5 * (low + high)


def _discrete_alpha_sigma(sde, index):
  """alpha_i, sigma_i of the discrete chain at integer steps `index`."""
  if isinstance(sde, sde_lib.VPSDE):
    alphabar = sde.alphas_cumprod[index]
    return np.sqrt(alphabar), np.sqrt(1.0 - alphabar)
  if isinstance(sde, sde_lib.VESDE):
    return np.ones(np.shape(index)), sde.discrete_sigmas[index]
  return alpha_sigma(sde, index * sde.T / (sde.N - 1))


@dataclasses.dataclass(frozen=True)
class Nodes:
  """Points of a sampling run, each array (n,) float64.

  times: the points in [eps, T]; score_times: the time the score is asked at (equal to `times`
  for a continuous model, inside the step for a discrete one); alphas, sigmas: the kernel there.
  """

  times: np.ndarray
  score_times: np.ndarray
  alphas: np.ndarray
  sigmas: np.ndarray

  @property
  def log_snrs(self) -> np.ndarray:
    return np.log(self.alphas) - np.log(self.sigmas)


def nodes_at(sde, times, continuous: bool = True) -> Nodes:
  """The Nodes at `times`; for a discrete model each time snaps to the nearest step."""
  times = np.asarray(times, np.float64)
  if continuous:
    return Nodes(times, times, *alpha_sigma(sde, times))
  step = sde.T / (sde.N - 1)
  index = np.clip(np.rint(times / step), 0, sde.N - 1).astype(np.int64)
  return Nodes(index * step, np.minimum((index + 0.5) * step, sde.T),
               *_discrete_alpha_sigma(sde, index))


def _continuous_times(sde, num_steps: int, eps: float, schedule: str, rho: float,
                      t_start: float):
  """num_steps + 1 times from t_start down to eps spaced by `schedule`."""
  fractions = np.linspace(0.0, 1.0, num_steps + 1)
  if schedule == 'time_uniform':
    return t_start + fractions * (eps - t_start)
  if schedule == 'quadratic':  # uniform in sqrt(t) (DPM-Solver's 'time_quadratic')
    return (np.sqrt(t_start) + fractions * (np.sqrt(eps) - np.sqrt(t_start)))**2
  lam_start, lam_end = log_snr(sde, [t_start, eps])
  if schedule == 'logsnr':
    lam = lam_start + fractions * (lam_end - lam_start)
  else:  # 'rho': EDM's sigma~ = sigma / alpha = exp(-lambda) spaced as in Karras et al., Eq. 5
    root_start, root_end = np.exp(-lam_start) ** (1 / rho), np.exp(-lam_end) ** (1 / rho)
    lam = -rho * np.log(root_start + fractions * (root_end - root_start))
  times = time_of_log_snr(sde, lam)
  times[0], times[-1] = t_start, eps
  return times


def _snap_decreasing(index: np.ndarray, first: int, last: int) -> np.ndarray:
  """Strictly decreasing integers from `first` to `last` as close as possible to `index`."""
  count = len(index)
  lowest = last + np.arange(count)[::-1]  # room for the steps still to come
  highest = first - np.arange(count)
  index = np.clip(index, lowest, highest)
  index[0], index[-1] = first, last
  for k in range(1, count):
    index[k] = min(index[k], index[k - 1] - 1)
  return index


def step_at_or_below(sde, t) -> int:
  """The discrete step i = floor(t (N - 1) / T) of time t (`SDE.timestep_index`), computed in
  float64 and forgiving the rounding of t = i T / (N - 1) itself."""
  return int(np.clip(np.floor(t * (sde.N - 1) / sde.T + 1e-9), 0, sde.N - 1))


def time_grid(sde, num_steps: int, eps: float, schedule: str = 'logsnr', *, rho: float = 7.0,
              continuous: bool = True, t_start=None) -> Nodes:
  """num_steps + 1 Nodes from t_start (None: T) down to eps spaced by `schedule`:

    'time_uniform': equal steps in t;   'quadratic': equal steps in sqrt(t);
    'logsnr': equal steps in lambda;    'rho': EDM's schedule of sigma / alpha with exponent rho.

  A discrete model's grid snaps to distinct steps of its own, from its step at or below t_start
  (`step_at_or_below`) down to the step of eps (so num_steps <= the steps between).
  """
  if schedule not in SCHEDULES:
    raise ValueError(f'Unknown time schedule {schedule!r}; allowed: {list(SCHEDULES)}.')
  if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
    raise ValueError(f'num_steps = {num_steps!r} must be a positive integer.')
  if not rho > 0:
    raise ValueError(f'rho = {rho} must be positive.')
  sde.check_eps(eps)
  t_start = start.start_time(sde, t_start, eps)
  times = _continuous_times(sde, num_steps, eps, schedule, rho, t_start)
  if continuous:
    return nodes_at(sde, times)
  step = sde.T / (sde.N - 1)
  first = step_at_or_below(sde, t_start)
  last = int(np.clip(np.floor(eps / step), 0, sde.N - 1))  # the step of eps (SDE.timestep_index)
  if num_steps > first - last:
    begin = 'T' if t_start == sde.T else f't_start = {t_start}'
    raise ValueError(f'num_steps = {num_steps} exceeds the {first - last} steps of this discrete '
                     f'model between {begin} and eps = {eps}.')
  index = _snap_decreasing(np.rint(times / step).astype(np.int64), first, last)
  return nodes_at(sde, index * step, continuous=False)


def midpoints(sde, nodes: Nodes, fraction: float, continuous: bool = True) -> Nodes:
  """Points a `fraction` of the way in lambda from each node to the next, (n - 1,) each (the
  intermediate points of single-step solvers; snapped to steps for a discrete model)."""
  lam = nodes.log_snrs
  return nodes_at(sde, time_of_log_snr(sde, lam[:-1] + fraction * np.diff(lam)), continuous)


def resolve_steps(num_steps, nfe, evals_per_step: int, denoise: bool, name: str) -> int:
  """The number of steps of a sampler: `num_steps`, or the most steps of `evals_per_step` score
  evaluations that fit in a budget of `nfe` evaluations (one more for a final denoising step).
  Exactly one of the two is given; ValueError otherwise, or if not even one step fits."""
  if (num_steps is None) == (nfe is None):
    raise ValueError(f'{name}: give exactly one of num_steps ({num_steps!r}) and nfe ({nfe!r}).')
  value = num_steps if nfe is None else nfe
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f'{name}: {"num_steps" if nfe is None else "nfe"} = {value!r} must be a '
                     'positive integer.')
  if nfe is None:
    return int(num_steps)
  steps = (nfe - int(denoise)) // evals_per_step
  if steps < 1:
    raise ValueError(f'{name}: nfe = {nfe} is too small; one step takes {evals_per_step} score '
                     f'evaluations{", plus 1 to denoise" if denoise else ""}.')
  return steps


def data_estimate(score_fn, x, t, alpha, sigma):
  """x0_hat = (x + sigma^2 s(x, t)) / alpha (Tweedie's formula): x (B, ...), and scalars t,
  alpha, sigma of one node (traced float32)."""
  batch_t = jnp.full(x.shape[0], t)
  return (x + sigma**2 * score_fn(x, batch_t)) / alpha


def as_float32(*arrays):
  """numpy coefficient arrays -> jnp float32 constants."""
  return tuple(jnp.asarray(a, jnp.float32) for a in arrays)
