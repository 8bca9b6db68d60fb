"""Consistency distillation (Song et al. 2023) on the checkerboard: an MLP student of the VP toy
run given as --config.training.teacher=WORKDIR (configs/toy/vp.py), sampled in one step."""
from configs import _consistency_fields
from configs.toy import vp


def get_config():
  config = vp.get_config()
  _consistency_fields.add_consistency_fields(config, 'cd')
  config.model.sigma_data = 1.0  # the toy coordinates have std about 1
  config.training.n_iters = 4000
  config.training.snapshot_freq = 2000
  config.eval.enable_bpd = False  # a consistency model has no probability-flow ODE of its own
  return config
