"""Model registry and the conventions that turn a network's output into a score.

A model is a flax.linen Module built as `Model(config=config)` and called as
`model.apply(variables, x, labels, train=...)` with x of shape (B, ...) and labels of shape (B,).
What `labels` means and how the output becomes a score follow the official implementation, so its
checkpoints sample correctly here (`get_score_fn`):

  SDE      training     network input (labels)           score
  VP       continuous   999 t                            -output / std(t)
  VP       discrete     step index i (int)               -output / sqrt(1 - alphabar_i)
  subVP    either       999 t                            -output / std(t)
  VE       continuous   sigma(t)                         output
  VE       discrete     N - 1 - i (int, sigmas descend)  output
"""
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_sde import config_checks
from score_sde import sde as sde_lib
from score_sde.registry import Registry

_MODELS = Registry('model')
register_model = _MODELS.register
registered_models = _MODELS.names


def get_model(config) -> nn.Module:
  """The registered model named by `config.model.name`, built from `config`."""
  name = config_checks.choice(config, 'model.name', _MODELS.names())
  return _MODELS.get(name)(config=config)


def init_model(key: jax.Array, config, data_shape: tuple) -> tuple:
  """Builds the model and initialises its variables on a batch of zeros of shape (1, *data_shape).

  Returns (model, variables) with variables = {'params': ...}.
  """
  model = get_model(config)
  params_key, dropout_key = jax.random.split(key)
  variables = model.init({'params': params_key, 'dropout': dropout_key},
                         jnp.zeros((1, *data_shape)), jnp.zeros((1,), jnp.int32), train=False)
  return model, dict(variables)


def get_model_fn(model: nn.Module, variables, train: bool = False) -> Callable:
  """model_fn(x, labels, rng=None) -> network output; `rng` drives dropout when `train`."""

  def model_fn(x, labels, rng=None):
    if train:
      return model.apply(variables, x, labels, train=True, rngs={'dropout': rng})
    return model.apply(variables, x, labels, train=False)

  return model_fn


def get_score_fn(sde: sde_lib.SDE, model: nn.Module, variables, train: bool = False,
                 continuous: bool = False) -> Callable:
  """score_fn(x, t, rng=None) -> score estimate like x, for x (B, ...) and t (B,) in [0, T]."""
  model_fn = get_model_fn(model, variables, train=train)

  if isinstance(sde, (sde_lib.VPSDE, sde_lib.subVPSDE)):

    def score_fn(x, t, rng=None):
      if continuous or isinstance(sde, sde_lib.subVPSDE):
        output = model_fn(x, 999.0 * t, rng)
        std = sde.marginal_prob(jnp.zeros_like(x), t)[1]
      else:
        index = sde.timestep_index(t)
        output = model_fn(x, index, rng)
        std = jnp.asarray(sde.sqrt_1m_alphas_cumprod, jnp.float32)[index]
      return -output / sde_lib.expand_to(std, x)

  elif isinstance(sde, sde_lib.VESDE):

    def score_fn(x, t, rng=None):
      if continuous:
        labels = sde.marginal_prob(jnp.zeros_like(x), t)[1]
      else:
        labels = sde.N - 1 - sde.timestep_index(t)
      return model_fn(x, labels, rng)

  else:
    raise ValueError(f'No score convention for SDE {type(sde).__name__}; '
                     f'supported: VPSDE, subVPSDE, VESDE.')
  return score_fn


# Importing the model modules registers them.
from score_sde.models import ddpm, mlp, ncsnpp, ncsnv2  # noqa: E402,F401
