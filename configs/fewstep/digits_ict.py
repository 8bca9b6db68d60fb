"""Improved consistency training (Song & Dhariwal 2023) on the bundled digits from data alone,
with the network of configs/digits/ddpmpp_vp.py; one-step samples."""
from configs import _consistency_fields
from configs.digits import ddpmpp_vp


def get_config():
  config = ddpmpp_vp.get_config()
  _consistency_fields.add_consistency_fields(config, 'ict')
  config.model.sigma_data = 0.5  # images in [-1, 1]
  config.eval.enable_bpd = False  # a consistency model has no probability-flow ODE of its own
  return config
