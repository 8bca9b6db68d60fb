"""NCSN++ cont. (sub-VP) on CIFAR-10 (Song et al. 2021, Table 3)."""
from configs.vp import cifar10_ncsnpp_continuous as parent


def get_config():
  config = parent.get_config()
  config.training.sde = 'subvpsde'
  return config
