"""Samplers: `get_sampler(config, sde)` and the predictor / corrector registries.

Every sampler is a function sample(key, score_fn, shape, first_index=0) -> (samples, nfe).
"""
import jax

from score_sde import config_checks
from score_sde import models as models_lib
from score_sde.sampling import correctors
from score_sde.sampling.correctors import (Corrector, get_corrector, register_corrector,
                                           registered_correctors)
from score_sde.sampling.pc import get_pc_sampler
from score_sde.sampling.predictors import (Predictor, get_predictor, register_predictor,
                                           registered_predictors)

__all__ = ['Corrector', 'Predictor', 'SAMPLING_METHODS', 'get_corrector', 'get_model_sampler',
           'get_pc_sampler', 'get_predictor', 'get_sampler', 'register_corrector',
           'register_predictor', 'registered_correctors', 'registered_predictors']

SAMPLING_METHODS = ('pc',)


def get_sampler(config, sde):
  """The sampler selected by config.sampling (method, predictor, corrector, snr, ...)."""
  config_checks.choice(config, 'sampling.method', SAMPLING_METHODS)
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


def get_model_sampler(config, sde, model, shape):
  """Jitted draw(variables, key, first_index=0) -> (samples of `shape`, nfe) from a trained model,
  with the score convention of config.training.continuous."""
  sampler = get_sampler(config, sde)
  continuous = bool(config_checks.get(config, 'training.continuous'))

  @jax.jit
  def draw(variables, key, first_index=0):
    score_fn = models_lib.get_score_fn(sde, model, variables, train=False, continuous=continuous)
    return sampler(key, score_fn, shape, first_index)

  return draw
