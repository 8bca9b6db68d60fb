"""Consistency distillation of the bundled-digits DDPM++ run (configs/digits/ddpmpp_vp.py, given
as --config.training.teacher=WORKDIR): a student of the same network, same length of run,
sampled in one step (sampling.consistency_levels for more)."""
from configs import _consistency_fields
from configs.digits import ddpmpp_vp


def get_config():
  config = ddpmpp_vp.get_config()
  _consistency_fields.add_consistency_fields(config, 'cd')
  config.model.sigma_data = 0.5  # images in [-1, 1]
  config.eval.enable_bpd = False  # a consistency model has no probability-flow ODE of its own
  return config
