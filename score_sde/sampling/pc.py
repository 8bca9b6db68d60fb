"""The predictor-corrector sampler (paper, Algorithm 1), one jitted lax.fori_loop.

Time grid t_0 = T > t_1 > ... > t_{N-1} = eps (linspace). Iteration i runs the predictor from t_i
(to t_i - T/N) and then the corrector at t_{i+1}; a last predictor step at t_{N-1} = eps ends the
run, and with `noise_removal` its noise-free mean is returned (the final denoising step). So the
corrector runs N - 1 times, never at the prior's time T, where x is already a prior sample.
"""
import jax
import jax.numpy as jnp
import numpy as np

from score_sde import sde as sde_lib
from score_sde.sampling import correctors, predictors, start, streams


def _first_step_at_or_below(sde, eps: float, t_start: float) -> int:
  """The first i with t_i = T + i (eps - T) / (N - 1) <= t_start (to float64 rounding)."""
  times = np.linspace(sde.T, eps, sde.N)
  return int(np.argmax(times <= t_start * (1 + 1e-12)))


def get_pc_sampler(sde, predictor: str = 'reverse_diffusion', corrector: str = 'none', *,
                   snr: float = 0.16, n_steps_each: int = 1, probability_flow: bool = False,
                   noise_removal: bool = True, eps: float = 1e-3,
                   step_size_rule: str = 'batch', t_start=None):
  """Returns sample(key, score_fn, shape, first_index=0, project=None, *, x_start=None) ->
  (samples, nfe).

  Sample k (k = first_index .. first_index + shape[0] - 1) draws all its noise from
  fold_in(key, k). `score_fn(x, t)` is any score, x (B, ...) and t (B,). `shape` must be static
  under jit. nfe counts score evaluations per sample (an int, the same for every sample).

  `project(keys, x, t) -> x`, if given, constrains the state at time t: it is applied to the
  prior draw and after every predictor and corrector update, with the time the state has then
  (controllable generation, see score_sde.controllable); keys are per-sample keys (B,).

  t_start (None: T): the run starts at the first of the N times t_i at or below t_start, from
  x_start, taken as the state there (None: the prior draws, only for t_start = T; see
  sampling.start); it keeps the steps, noise streams and nfe of the whole run's remaining part.
  """
  predictor_cls = predictors.get_predictor(predictor)
  corrector_cls = correctors.get_corrector(corrector)
  if probability_flow and not predictor_cls.has_probability_flow:
    raise ValueError(f'{predictor} has no probability-flow form; use predictor '
                     "'reverse_diffusion' or 'euler_maruyama' with probability_flow.")
  if n_steps_each < 1:
    raise ValueError(f'n_steps_each = {n_steps_each} must be a positive integer.')
  sde.check_eps(eps)
  if isinstance(sde, sde_lib.VPSDE) and np.max(sde.discrete_betas) > 1:
    raise ValueError(f'The VP SDE with N = {sde.N} steps has discrete betas up to '
                     f'{np.max(sde.discrete_betas):.3g} > 1 (beta_max / N), which its DDPM chain '
                     'cannot take: use N >= beta_max for the PC sampler.')
  correctors.check_step_size_rule(step_size_rule)
  t_start = start.start_time(sde, t_start, eps)
  first = _first_step_at_or_below(sde, eps, t_start)

  def sample(key, score_fn, shape, first_index=0, project=None, *, x_start=None):
    predictor_obj = predictor_cls(sde, score_fn, probability_flow)
    corrector_obj = corrector_cls(sde, score_fn, snr, n_steps_each, step_size_rule)
    keys = streams.sample_keys(key, first_index, shape[0])
    timesteps = jnp.linspace(sde.T, eps, sde.N)

    def step_keys(i, role):
      return streams.fold_in_each(streams.fold_in_each(keys, i + 1), role)

    def constrain(i, role, x):
      if project is None:
        return x
      return project(step_keys(i, role), x, jnp.full(shape[0], timesteps[i + 1]))

    def predict(i, x):
      return predictor_obj.update(step_keys(i, 0), x, jnp.full(shape[0], timesteps[i]))

    def predict_correct(i, x):
      x = constrain(i, 2, predict(i, x)[0])
      x, _ = corrector_obj.update(step_keys(i, 1), x, jnp.full(shape[0], timesteps[i + 1]))
      return constrain(i, 3, x)

    x = constrain(first - 1, 2, start.initial_state(sde, keys, shape, x_start, t_start))
    x = jax.lax.fori_loop(first, sde.N - 1, predict_correct, x)
    x, x_mean = predict(sde.N - 1, x)
    nfe = ((sde.N - first) * predictor_obj.evals_per_step +
           (sde.N - 1 - first) * corrector_obj.evals_per_step)
    return (x_mean if noise_removal else x), nfe

  return sample
