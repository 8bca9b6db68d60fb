"""Improved consistency training (Song & Dhariwal 2023) on the checkerboard from data alone:
pseudo-Huber distance, lognormal levels, the doubling curriculum, no EMA target; one-step
samples."""
from configs import _consistency_fields
from configs.toy import vp


def get_config():
  config = vp.get_config()
  _consistency_fields.add_consistency_fields(config, 'ict')
  config.model.sigma_data = 1.0  # the toy coordinates have std about 1
  config.training.n_iters = 8000
  config.training.snapshot_freq = 4000
  config.consistency.curriculum_end = 40  # N grows to 41, not iCT's 1281: a short run
  config.eval.enable_bpd = False  # a consistency model has no probability-flow ODE of its own
  return config
