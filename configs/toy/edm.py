"""EDM preconditioning (Karras et al. 2022) on the checkerboard: an MLP trained as the F of a
denoiser on log-normal noise levels, with the VE SDE as prior and time grid, sampled with EDM's
Heun sampler. Any other SDE or sampler works with the same network (score_sde.edm)."""
from configs.toy import ve


def get_config():
  config = ve.get_config()
  config.model.preconditioning = 'edm'
  config.model.sigma_data = 1.0  # the toy distributions' coordinates have std about 1
  config.model.scale_by_sigma = False  # c_out scales the output
  config.sampling.method = 'edm'
  config.sampling.nfe = 35
  return config
