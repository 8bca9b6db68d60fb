"""NCSN on CelebA with techniques 1, 2 and 4 of Song & Ermon 2020: largest noise level 90,
500 levels, 5 Langevin steps per level at snr 0.128; no EMA."""
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
  sampling.n_steps_each = 5
  sampling.snr = 0.128
  sampling.eps = 1e-5  # the official sampling eps of VE SDEs

  model = config.model
  model.name = 'ncsn'
  model.scale_by_sigma = False
  model.ema_rate = 0.
  model.num_scales = 500
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
