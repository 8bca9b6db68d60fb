"""NCSN on CIFAR-10 with techniques 1, 2, 4 and 5 of Song & Ermon 2020: as cifar10_124, with an
EMA of the weights (rate 0.999)."""
from configs.default_cifar10_configs import get_default_configs


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
  sampling.snr = 0.176
  sampling.eps = 1e-5  # the official sampling eps of VE SDEs

  model = config.model
  model.name = 'ncsn'
  model.scale_by_sigma = False
  model.ema_rate = 0.999
  model.num_scales = 232
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
