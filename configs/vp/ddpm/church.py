"""DDPM (Ho et al. 2020) on LSUN church_outdoor, 256x256."""
from configs.vp.ddpm import bedroom as parent


def get_config():
  config = parent.get_config()
  config.data.category = 'church_outdoor'
  return config
