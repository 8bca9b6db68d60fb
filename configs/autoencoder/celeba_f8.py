"""The KL autoencoder: see configs/default_autoencoder_configs.py."""
from configs.default_autoencoder_configs import autoencoder_config


def get_config():
  return autoencoder_config('CELEBA', 8)
