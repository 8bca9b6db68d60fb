"""NCSN on CelebA with technique 5 of Song & Ermon 2020 only: the original 10 noise levels
from 1 to 0.01, with an EMA of the weights (rate 0.999)."""
from configs.ve.ncsn import celeba as parent


def get_config():
  config = parent.get_config()
  config.model.ema_rate = 0.999
  return config
