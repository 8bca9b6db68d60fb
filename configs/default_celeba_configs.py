"""Defaults shared by the CelebA experiment configs (64x64 RGB): the CIFAR-10 defaults with the
official CelebA changes."""
from configs import default_cifar10_configs


def get_default_configs():
  config = default_cifar10_configs.get_default_configs()
  config.sampling.snr = 0.17
  config.eval.begin_ckpt = 1
  config.eval.enable_sampling = True
  config.eval.bpd_num_samples = 19962  # the whole test split
  config.data.dataset = 'CELEBA'
  config.data.image_size = 64
  config.model.sigma_max = 90.
  return config
