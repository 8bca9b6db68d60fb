"""The predictor-corrector sampler (paper, Algorithm 1), one jitted lax.fori_loop.

Time grid t_0 = T > t_1 > ... > t_{N-1} = eps (linspace). Iteration i runs the predictor from t_i
(to t_i - T/N) and then the corrector at t_{i+1}; a last predictor step at t_{N-1} = eps ends the
run, and with `noise_removal` its noise-free mean is returned (the final denoising step). So the
corrector runs N - 1 times, never at the prior's time T, where x is already a prior sample.
"""
import jax
import jax.numpy as jnp

from score_sde.sampling import correctors, predictors, streams


def get_pc_sampler(sde, predictor: str = 'reverse_diffusion', corrector: str = 'none', *,
                   snr: float = 0.16, n_steps_each: int = 1, probability_flow: bool = False,
                   noise_removal: bool = True, eps: float = 1e-3,
                   step_size_rule: str = 'batch'):
  """Returns sample(key, score_fn, shape, first_index=0, project=None) -> (samples, nfe).

  Sample k (k = first_index .. first_index + shape[0] - 1) draws all its noise from
  fold_in(key, k). `score_fn(x, t)` is any score, x (B, ...) and t (B,). `shape` must be static
  under jit. nfe counts score evaluations per sample (an int, the same for every sample).

  `project(keys, x, t) -> x`, if given, constrains the state at time t: it is applied to the
  prior draw and after every predictor and corrector update, with the time the state has then
  (controllable generation, see score_sde.controllable); keys are per-sample keys (B,).
  """
  predictor_cls = predictors.get_predictor(predictor)
  corrector_cls = correctors.get_corrector(corrector)
  if probability_flow and not predictor_cls.has_probability_flow:
    raise ValueError(f'{predictor} has no probability-flow form; use predictor '
                     "'reverse_diffusion' or 'euler_maruyama' with probability_flow.")
  if n_steps_each < 1:
    raise ValueError(f'n_steps_each = {n_steps_each} must be a positive integer.')
  sde.check_eps(eps)
  correctors.check_step_size_rule(step_size_rule)

  def sample(key, score_fn, shape, first_index=0, project=None):
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

    x = jax.vmap(lambda k: sde.prior_sampling(k, shape[1:]))(streams.fold_in_each(keys, 0))
    x = constrain(-1, 2, x)
    x = jax.lax.fori_loop(0, sde.N - 1, predict_correct, x)
    x, x_mean = predict(sde.N - 1, x)
    nfe = sde.N * predictor_obj.evals_per_step + (sde.N - 1) * corrector_obj.evals_per_step
    return (x_mean if noise_removal else x), nfe

  return sample
