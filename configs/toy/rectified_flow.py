"""Rectified flow (Liu et al. 2023) on the checkerboard: an MLP velocity trained by flow matching on
the linear path x(t) = (1 - t) x0 + t z, sampled (and its bits/dim evaluated) through the
probability-flow ODE from t = 1. Fewer ODE steps: sampling.ode_solver = 'euler' or 'heun' with
sampling.ode_steps."""
from configs.default_toy_configs import get_default_configs


def get_config():
  config = get_default_configs()
  config.training.sde = 'rectified_flow'
  config.model.parameterization = 'velocity'  # its only one (None means it too)
  config.model.embedding_type = 'positional'  # of 999 t
  config.sampling.method = 'ode'  # the grid samplers and 'pc' need alpha(T) > 0
  return config
