"""DDPM on CIFAR-10 without time conditioning (model.conditional = False): the network does
not see the noise level (technique 3 of Song & Ermon 2020)."""
from configs.vp.ddpm import cifar10 as parent


def get_config():
  config = parent.get_config()
  config.model.conditional = False
  return config
