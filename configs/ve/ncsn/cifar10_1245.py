"""NCSN on CIFAR-10 with techniques 1, 2, 4 and 5 of Song & Ermon 2020: as cifar10_124, with an
EMA of the weights (rate 0.999)."""
from configs.ve.ncsn import cifar10_124 as parent


def get_config():
  config = parent.get_config()
  config.model.ema_rate = 0.999
  return config
