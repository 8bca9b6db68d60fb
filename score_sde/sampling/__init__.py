"""Samplers: `get_sampler(config, sde)` and the predictor / corrector registries.

Every sampler is a function sample(key, score_fn, shape, first_index=0) -> (samples, nfe):
'pc' (predictor-corrector, pc.py; nfe an int) or 'ode' (probability-flow ODE, ode.py; nfe per
sample, shape (B,)).
"""
import jax

from score_sde import config_checks
from score_sde import models as models_lib
from score_sde.sampling import correctors, ode
from score_sde.sampling.ode import ODESolver, get_flow_maps, get_ode_sampler
from score_sde.sampling.correctors import (Corrector, get_corrector, register_corrector,
                                           registered_correctors)
from score_sde.sampling.pc import get_pc_sampler
from score_sde.sampling.predictors import (Predictor, get_predictor, register_predictor,
                                           registered_predictors)

__all__ = ['Corrector', 'ODESolver', 'Predictor', 'SAMPLING_METHODS', 'get_corrector',
           'get_flow_maps', 'get_model_sampler', 'get_ode_sampler', 'get_pc_sampler',
           'get_predictor', 'get_sampler', 'register_corrector', 'register_predictor',
           'registered_correctors', 'registered_predictors']

SAMPLING_METHODS = ('pc', 'ode')


def get_sampler(config, sde, continuous: bool = True):
  """The sampler selected by config.sampling.

  method 'pc': predictor, corrector, snr, n_steps_each, step_size_rule, probability_flow,
  noise_removal, eps. method 'ode': ode_solver, rtol, atol, ode_steps (for 'euler' / 'heun'),
  noise_removal, eps. `continuous=False` declares a score conditioned on discrete steps (the
  ODE's adaptive solvers then step to each of its jumps).
  """
  method = config_checks.choice(config, 'sampling.method', SAMPLING_METHODS)
  if method == 'ode':
    solver = ODESolver(solver=config_checks.choice(config, 'sampling.ode_solver', ode.SOLVERS),
                       rtol=config_checks.positive_float(config, 'sampling.rtol'),
                       atol=config_checks.positive_float(config, 'sampling.atol'),
                       num_steps=config_checks.positive_int(config, 'sampling.ode_steps'))
    return get_ode_sampler(sde, solver,
                           noise_removal=bool(config_checks.get(config, 'sampling.noise_removal')),
                           eps=config_checks.positive_float(config, 'sampling.eps'),
                           continuous=continuous)
  return get_pc_sampler(
      sde,
      predictor=config_checks.choice(config, 'sampling.predictor', registered_predictors()),
      corrector=config_checks.choice(config, 'sampling.corrector', registered_correctors()),
      snr=config_checks.positive_float(config, 'sampling.snr'),
      n_steps_each=config_checks.positive_int(config, 'sampling.n_steps_each'),
      probability_flow=bool(config_checks.get(config, 'sampling.probability_flow')),
      noise_removal=bool(config_checks.get(config, 'sampling.noise_removal')),
      eps=config_checks.positive_float(config, 'sampling.eps'),
      step_size_rule=config_checks.choice(config, 'sampling.step_size_rule',
                                          correctors.STEP_SIZE_RULES))


def get_model_sampler(config, sde, model, shape, sharding=None):
  """Jitted draw(variables, key, first_index=0) -> (samples of `shape`, nfe) from a trained model,
  with the score convention of config.training.continuous. `sharding` (e.g. batch-sharded over a
  device mesh) lays out the samples, and with them the sampling work, over the devices."""
  continuous = bool(config_checks.get(config, 'training.continuous'))
  sampler = get_sampler(config, sde, continuous)

  @jax.jit
  def draw(variables, key, first_index=0):
    score_fn = models_lib.get_score_fn(sde, model, variables, train=False, continuous=continuous)
    samples, nfe = sampler(key, score_fn, shape, first_index)
    if sharding is not None:
      samples = jax.lax.with_sharding_constraint(samples, sharding)
    return samples, nfe

  return draw
