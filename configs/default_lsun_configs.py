"""Defaults shared by the 256x256 experiment configs (LSUN, and FFHQ / CelebA-HQ): the CIFAR-10
defaults with the official LSUN changes. LSUN configs also set data.category."""
from configs import default_cifar10_configs


def get_default_configs():
  config = default_cifar10_configs.get_default_configs()
  config.training.batch_size = 64
  config.training.n_iters = 2400001
  config.training.snapshot_freq_for_preemption = 5000
  config.sampling.snr = 0.075
  config.eval.begin_ckpt = 50
  config.eval.end_ckpt = 96
  config.eval.batch_size = 512
  config.eval.enable_sampling = True
  config.eval.bpd_num_samples = 300  # the whole validation split of an LSUN category
  config.data.dataset = 'LSUN'
  config.data.image_size = 256
  config.model.sigma_max = 378.
  config.model.num_scales = 2000
  config.model.dropout = 0.
  return config
