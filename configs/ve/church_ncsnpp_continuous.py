"""NCSN++ cont. (VE SDE) on LSUN church_outdoor, 256x256."""
from configs.ve import bedroom_ncsnpp_continuous as parent


def get_config():
  config = parent.get_config()
  config.data.category = 'church_outdoor'
  config.model.sigma_max = 380.
  return config
