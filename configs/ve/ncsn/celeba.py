"""NCSN (Song & Ermon 2019) on CelebA: 10 noise levels from 1 to 0.01, annealed Langevin
dynamics with 100 steps per level."""
from configs.default_celeba_configs import get_default_configs


def get_config():
  config = get_default_configs()

  training = config.training
  training.sde = 'vesde'
  training.continuous = False

  sampling = config.sampling
  sampling.method = 'pc'
  sampling.predictor = 'none'
  sampling.corrector = 'ald'
  sampling.n_steps_each = 100
  sampling.snr = 0.316
  sampling.eps = 1e-5  # the official sampling eps of VE SDEs

  model = config.model
  model.name = 'ncsn'
  model.scale_by_sigma = False
  model.ema_rate = 0.
  model.sigma_max = 1.
  model.num_scales = 10
  model.num_classes = model.get_ref('num_scales')  # bound: one class per noise level
  model.normalization = 'InstanceNorm++'
  model.nonlinearity = 'elu'
  model.nf = 128
  model.interpolation = 'bilinear'

  optim = config.optim
  optim.weight_decay = 0.
  optim.optimizer = 'Adam'
  optim.lr = 1e-3
  optim.beta1 = 0.9
  optim.amsgrad = False
  optim.eps = 1e-8
  optim.warmup = 0
  optim.grad_clip = -1.
  return config
