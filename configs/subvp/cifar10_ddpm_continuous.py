"""DDPM architecture (Ho et al. 2020) trained with the sub-VP SDE on CIFAR-10 (continuous time)."""
from configs.vp.ddpm import cifar10_continuous as parent


def get_config():
  config = parent.get_config()
  config.training.sde = 'subvpsde'
  return config
