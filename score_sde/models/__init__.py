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

A velocity model (model.parameterization = 'velocity', every rectified-flow model) outputs the
velocity of the flow (score_sde.flows) from the labels of the continuous rows above (999 t for
the rectified flow); its score function is a flows.VelocityScore, which carries that
velocity (`get_velocity_fn`).

Class-conditional models (NCSN++, DDPM and MLP with model.num_classes, see models.conditioning)
also take `class_labels` int (B,), the null label num_classes (or None) for an unconditional
prediction; model and score functions pass them through. The cross-attention U-Net (ldm_unet)
takes its condition the same way: class labels, caption word ids (B, L) or text features
(B, L, D) (models/ldm_unet.py).

A model with model.preconditioning = 'edm' is instead the network F of an EDM denoiser (Karras
et al. 2022): its noise input is c_noise(sigma) (sigma itself for embedding_type 'fourier') with
sigma = std(t) / mean-scale(t), whatever the SDE, and the score is that of the denoiser
(score_sde.edm); with 'consistency' it is a consistency model's network, and the denoiser its
consistency function f (score_sde.consistency).
"""
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_sde import config_checks, consistency
from score_sde import edm
from score_sde import flows
from score_sde import sde as sde_lib
from score_sde.models import conditioning, init_once
from score_sde.registry import Registry

_MODELS = Registry('model')
register_model = _MODELS.register
registered_models = _MODELS.names


def get_model(config) -> nn.Module:
  """The registered model named by `config.model.name`, built from `config`."""
  name = config_checks.choice(config, 'model.name', _MODELS.names())
  return _MODELS.get(name)(config=config)


def num_data_classes(config) -> Optional[int]:
  """The number of data classes n of the config's model if it is class-conditional (class labels
  0 .. n - 1, n the null label), else None: model.num_classes unset, or a model that takes no
  class labels (NCSN, NCSNv2, whose model.num_classes counts noise levels)."""
  model = _MODELS.get(config_checks.choice(config, 'model.name', _MODELS.names()))
  if not getattr(model, 'takes_class_labels', False):
    return None
  if hasattr(model, 'class_conditional') and not model.class_conditional(config):
    return None
  return conditioning.num_classes(config)


def example_condition(config) -> Optional[jax.Array]:
  """The null condition of a conditional model for a batch of 1 (what its `class_labels` take:
  the null label (1,) of a class-conditional model, or the model's own kind of condition, e.g.
  the word ids (1, L) of an empty caption), else None."""
  model = _MODELS.get(config_checks.choice(config, 'model.name', _MODELS.names()))
  if hasattr(model, 'example_condition'):
    return model.example_condition(config)
  classes = num_data_classes(config)
  return None if classes is None else jnp.full((1,), classes, jnp.int32)


def init_model(key: jax.Array, config, data_shape: tuple) -> tuple:
  """Builds the model and initialises its variables on a batch of zeros of shape (1, *data_shape)
  (and the null condition of a conditional model, `example_condition`).

  Returns (model, variables) with variables = {'params': ...}.
  """
  model = get_model(config)
  params_key, dropout_key = jax.random.split(key)
  kwargs = {}
  condition = example_condition(config)
  if condition is not None:
    kwargs['class_labels'] = condition
  variables = init_once.init_variables(model, {'params': params_key, 'dropout': dropout_key},
                                       jnp.zeros((1, *data_shape)), jnp.zeros((1,), jnp.int32),
                                       train=False, **kwargs)
  return model, variables


def get_model_fn(model: nn.Module, variables, train: bool = False) -> Callable:
  """model_fn(x, labels, rng=None, class_labels=None) -> network output; `rng` drives dropout
  when `train`; class_labels int (B,) (None: the null label) go to a class-conditional model, and
  a model without class conditioning refuses them (ValueError)."""
  takes_class_labels = getattr(type(model), 'takes_class_labels', False)

  def model_fn(x, labels, rng=None, class_labels=None):
    kwargs = {}
    if class_labels is not None:
      if not takes_class_labels:
        raise ValueError(f'Model {type(model).__name__} takes no class labels; class-conditional '
                         'models: ncsnpp, ddpm, mlp with model.num_classes set.')
      kwargs['class_labels'] = class_labels
    if train:
      return model.apply(variables, x, labels, train=True, rngs={'dropout': rng}, **kwargs)
    return model.apply(variables, x, labels, train=False, **kwargs)

  return model_fn


def get_velocity_fn(sde: sde_lib.SDE, model: nn.Module, variables,
                    train: bool = False) -> Callable:
  """velocity_fn(x, t, rng=None, class_labels=None) -> the output of a velocity model, v(x, t)
  like x, for x (B, ...) and t (B,): the network given sigma(t) (VE) or 999 t (every other
  process); rng and class_labels as in `get_model_fn`."""
  model_fn = get_model_fn(model, variables, train=train)

  def velocity_fn(x, t, rng=None, class_labels=None):
    if isinstance(sde, sde_lib.VESDE):
      labels = sde.marginal_prob(jnp.zeros_like(x), t)[1]
    else:
      labels = 999.0 * t
    return model_fn(x, labels, rng, class_labels)

  return velocity_fn


def get_score_fn(sde: sde_lib.SDE, model: nn.Module, variables, train: bool = False,
                 continuous: bool = False) -> Callable:
  """score_fn(x, t, rng=None, class_labels=None) -> score estimate like x, for x (B, ...) and
  t (B,) in [0, T]; class_labels int (B,) as in `get_model_fn` (None: unconditional). An EDM
  or consistency model (model.config.model.preconditioning) gives its denoiser's score, for
  either `continuous`."""
  model_fn = get_model_fn(model, variables, train=train)
  config = getattr(model, 'config', None)
  if (flows.is_velocity(config) if config is not None else
      isinstance(sde, sde_lib.RectifiedFlow)):
    return flows.velocity_score_fn(get_velocity_fn(sde, model, variables, train=train), sde)
  preconditioning = (consistency.preconditioning_from_config(config) if config is not None
                     else None)

  if preconditioning is not None:
    denoiser_score = edm.denoiser_score_fn(preconditioning.denoiser(model_fn), sde)

    def score_fn(x, t, rng=None, class_labels=None):
      return denoiser_score(x, t, rng=rng, class_labels=class_labels)

    return score_fn

  if isinstance(sde, (sde_lib.VPSDE, sde_lib.subVPSDE)):

    def score_fn(x, t, rng=None, class_labels=None):
      if continuous or isinstance(sde, sde_lib.subVPSDE):
        output = model_fn(x, 999.0 * t, rng, class_labels)
        std = sde.marginal_prob(jnp.zeros_like(x), t)[1]
      else:
        index = sde.timestep_index(t)
        output = model_fn(x, index, rng, class_labels)
        std = jnp.asarray(sde.sqrt_1m_alphas_cumprod, jnp.float32)[index]
      return -output / sde_lib.expand_to(std, x)

  elif isinstance(sde, sde_lib.VESDE):

    def score_fn(x, t, rng=None, class_labels=None):
      if continuous:
        labels = sde.marginal_prob(jnp.zeros_like(x), t)[1]
      else:
        labels = sde.N - 1 - sde.timestep_index(t)
      return model_fn(x, labels, rng, class_labels)

  else:
    raise ValueError(f'No score convention for SDE {type(sde).__name__}; '
                     f'supported: VPSDE, subVPSDE, VESDE.')
  return score_fn


# Importing the model modules registers them.
from score_sde.models import ddpm, ldm_unet, mlp, ncsnpp, ncsnv2  # noqa: E402,F401
