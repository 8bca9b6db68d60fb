"""diffusers' DDIMScheduler (schedulers/scheduling_ddim.py: set_timesteps, then step at each
timestep), reproduced exactly on a discrete VP model's chain (DDPM, Stable Diffusion).

With N the chain's steps and n = num_steps, set_timesteps picks the integer timesteps
  'leading'  (the default):  k_j = (n - 1 - j) (N // n) + steps_offset,
  'trailing':                k_j = round(N - j N / n) - 1,
  'linspace':                k_j = round((n - 1 - j) (N - 1) / (n - 1)),   j = 0 .. n - 1
(steps_offset only shifts 'leading', as in diffusers). The step at timestep k goes to
prev = k - N // n for every spacing (diffusers' rule, even where the next timestep differs).
With abar the chain's alphas_cumprod and abar_prev = abar[prev] for prev >= 0, else the final
alpha (1 with set_alpha_to_one, else abar[0]):

  eps    = -sqrt(1 - abar_k) s(x, t_k)                   (the model's epsilon from its score)
  x0     = (x - sqrt(1 - abar_k) eps) / sqrt(abar_k)
  std    = eta sqrt((1 - abar_prev) / (1 - abar_k) (1 - abar_k / abar_prev))   (DDIM, Eq. 16)
  x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - std^2) eps + std z          (DDIM, Eq. 12)

as diffusers with prediction_type 'epsilon', clip_sample = False and thresholding = False (Stable
Diffusion's scheduler config). There is no final denoising step: the run returns x_prev of the
last timestep.

Times: timestep k is the chain's step k, at time t_k = k T / (N - 1) (sampling.grid's discrete
steps); the score is asked at (k + 1/2) T / (N - 1) (capped at T), inside step k, so that
SDE.timestep_index gives k. A run from t_start (img2img) keeps the timesteps at or below it,
k <= floor(t_start (N - 1) / T), and takes x_start as the state at the first kept timestep,
as diffusers' img2img takes its noised latents; `strength_start_time` gives the t_start of
diffusers' `strength`.
"""
import jax
import jax.numpy as jnp
import numpy as np

from score_sde import sde as sde_lib
from score_sde.sampling import grid, start, streams

TIMESTEP_SPACINGS = ('leading', 'trailing', 'linspace')


def diffusers_timesteps(num_train_steps: int, num_steps: int, timestep_spacing: str = 'leading',
                        steps_offset: int = 1) -> np.ndarray:
  """DDIMScheduler.set_timesteps: num_steps decreasing integer timesteps (int64) out of
  num_train_steps; ValueError for choices diffusers refuses or whose timesteps leave the
  chain."""
  if timestep_spacing not in TIMESTEP_SPACINGS:
    raise ValueError(f'timestep_spacing = {timestep_spacing!r} is not supported; allowed: '
                     f'{list(TIMESTEP_SPACINGS)}.')
  if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or not (
      1 <= num_steps <= num_train_steps):
    raise ValueError(f'num_steps = {num_steps!r} must be an integer in [1, {num_train_steps}] '
                     '(the steps of the chain).')
  if timestep_spacing == 'linspace':
    timesteps = np.linspace(0, num_train_steps - 1, num_steps).round()[::-1].astype(np.int64)
  elif timestep_spacing == 'leading':
    step_ratio = num_train_steps // num_steps
    timesteps = (np.arange(0, num_steps) * step_ratio).round()[::-1].astype(np.int64)
    timesteps += steps_offset
  else:
    step_ratio = num_train_steps / num_steps
    timesteps = np.round(np.arange(num_train_steps, 0, -step_ratio)).astype(np.int64) - 1
  if len(timesteps) != num_steps or timesteps[0] >= num_train_steps or timesteps[-1] < 0:
    # 'leading' with a steps_offset past the end; 'trailing' for some num_steps (61, 103, ...),
    # where diffusers' float arange makes one timestep too many, -1.
    raise ValueError(f"diffusers' {timestep_spacing!r} timesteps for num_steps = {num_steps} and "
                     f'steps_offset = {steps_offset} are {len(timesteps)} steps '
                     f'{timesteps[0]}..{timesteps[-1]}, not {num_steps} steps of the chain\'s '
                     f'0..{num_train_steps - 1}.')
  return timesteps


def kept_timesteps(sde, num_steps: int, timestep_spacing: str = 'leading', steps_offset: int = 1,
                   t_start=None) -> tuple:
  """(timesteps, first): diffusers' timesteps for num_steps steps of `sde`'s chain and the index
  of the first one a run from t_start (None: T) keeps, the first k <= floor(t_start (N - 1) / T)
  (to rounding); ValueError if t_start is not in (0, T] or lies below every timestep."""
  timesteps = diffusers_timesteps(sde.N, num_steps, timestep_spacing, steps_offset)
  step = grid.step_at_or_below(sde, start.start_time(sde, t_start, 0.0))
  if timesteps[-1] > step:
    raise ValueError(f't_start = {t_start} lies below the last timestep {timesteps[-1]} (time '
                     f'{timesteps[-1] * sde.T / (sde.N - 1)}): no step to run.')
  return timesteps, int(np.argmax(timesteps <= step))


def strength_start_time(sde, num_steps: int, strength: float, timestep_spacing: str = 'leading',
                        steps_offset: int = 1) -> float:
  """The t_start at which a run keeps the timesteps that diffusers' img2img keeps for `strength`
  in (0, 1] (StableDiffusionImg2ImgPipeline.get_timesteps: the last min(int(num_steps *
  strength), num_steps) timesteps): k T / (N - 1) for the first kept timestep k. Its x_start is
  diffusers' noised latents, sqrt(abar_k) x0 + sqrt(1 - abar_k) z."""
  timesteps = diffusers_timesteps(sde.N, num_steps, timestep_spacing, steps_offset)
  if not 0 < strength <= 1:
    raise ValueError(f'strength = {strength} must lie in (0, 1].')
  kept = min(int(num_steps * strength), num_steps)
  if kept < 1:
    raise ValueError(f'strength = {strength} keeps none of {num_steps} timesteps; it must be at '
                     'least 1 / num_steps.')
  return float(timesteps[num_steps - kept] * sde.T / (sde.N - 1))


def _step_noise(keys, i, x):
  """The eta noise z of step i of the whole run, row k drawn from fold_in(keys[k], i + 1)."""
  return streams.normal_like(streams.fold_in_each(keys, i + 1), x)


def get_ddim_diffusers_sampler(sde, *, num_steps: int, eta: float = 0.0,
                               timestep_spacing: str = 'leading', steps_offset: int = 1,
                               set_alpha_to_one: bool = False, t_start=None):
  """Returns sample(key, score_fn, shape, first_index=0, *, x_start=None, project=None) ->
  (samples of `shape`, nfe (int): the timesteps run).

  sde: a VPSDE (its discrete chain: discrete_betas, alphas_cumprod). num_steps, eta (in [0, 1]),
  timestep_spacing, steps_offset, set_alpha_to_one: diffusers' num_inference_steps and
  DDIMScheduler options (defaults: Stable Diffusion's). Sample k draws its prior draw and noise
  from fold_in(key, k). t_start (None: T): keep the timesteps at or below t_start and start from
  x_start, the state there (None: prior draws, only for t_start = T); see the module docstring.
  `project(keys, x, t) -> x`, if given, constrains the state at time t (B,) as in the PC
  sampler: applied to the initial state and after every step (score_sde.controllable).
  """
  if not isinstance(sde, sde_lib.VPSDE):
    raise ValueError(f'ddim_diffusers runs on the discrete chain of a VPSDE (DDPM, Stable '
                     f'Diffusion); got {type(sde).__name__}.')
  if not 0.0 <= eta <= 1.0:
    raise ValueError(f'eta = {eta} must lie in [0, 1] (0: deterministic DDIM, 1: DDPM posterior).')
  timesteps, first = kept_timesteps(sde, num_steps, timestep_spacing, steps_offset, t_start)
  t_start = start.start_time(sde, t_start, 0.0)
  prev = timesteps - sde.N // num_steps
  abar = sde.alphas_cumprod
  abar_t = abar[timesteps]
  abar_prev = np.where(prev >= 0, abar[np.maximum(prev, 0)], 1.0 if set_alpha_to_one else abar[0])
  noise_std = eta * np.sqrt((1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev))
  step = sde.T / (sde.N - 1)
  state_steps = np.concatenate([[0], np.maximum(prev, 0)])  # the step of the state before step i
  state_steps[first] = timesteps[first]  # x_start's
  (score_times, alphas, sigmas, alphas_prev, directions, noise_std, state_times) = grid.as_float32(
      np.minimum((timesteps + 0.5) * step, sde.T), np.sqrt(abar_t), np.sqrt(1.0 - abar_t),
      np.sqrt(abar_prev), np.sqrt(1.0 - abar_prev - noise_std**2), noise_std, state_steps * step)

  def sample(key, score_fn, shape, first_index=0, *, x_start=None, project=None):
    keys = streams.sample_keys(key, first_index, shape[0])

    def constrain(i, x):  # x: the state before step i of the whole run
      if project is None:
        return x
      return project(streams.fold_in_each(streams.fold_in_each(keys, i), 1), x,
                     jnp.full(shape[0], state_times[i]))

    def ddim_step(i, x):
      eps = -sigmas[i] * score_fn(x, jnp.full(shape[0], score_times[i]))
      x0 = (x - sigmas[i] * eps) / alphas[i]
      x_prev = alphas_prev[i] * x0 + directions[i] * eps
      if eta > 0:
        x_prev = x_prev + noise_std[i] * _step_noise(keys, i, x)
      return constrain(i + 1, x_prev)

    x = constrain(first, start.initial_state(sde, keys, shape, x_start, t_start))
    return jax.lax.fori_loop(first, num_steps, ddim_step, x), num_steps - first

  return sample
