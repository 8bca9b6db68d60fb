"""NCSN on CelebA with techniques 1, 2, 4 and 5 of Song & Ermon 2020: as celeba_124, with an
EMA of the weights (rate 0.999)."""
from configs.ve.ncsn import celeba_124 as parent


def get_config():
  config = parent.get_config()
  config.model.ema_rate = 0.999
  return config
