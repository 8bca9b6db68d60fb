"""NCSN++ cont. (VE SDE) on FFHQ, 1024x1024 (Song et al. 2021, Sec. 4.4)."""
from configs.default_lsun_configs import get_default_configs


def get_config():
  config = get_default_configs()

  training = config.training
  training.batch_size = 8
  training.sde = 'vesde'
  training.continuous = True
  training.reduce_mean = True

  sampling = config.sampling
  sampling.method = 'pc'
  sampling.predictor = 'reverse_diffusion'
  sampling.corrector = 'langevin'
  sampling.snr = 0.15
  sampling.eps = 1e-5  # the official sampling eps of VE SDEs

  evaluate = config.eval
  evaluate.batch_size = 1024
  evaluate.begin_ckpt = 1

  data = config.data
  data.dataset = 'FFHQ'
  data.image_size = 1024
  # The authors' file; point it at your own copy.
  data.tfrecords_path = '/raid/song/ffhq-dataset/ffhq/ffhq-r10.tfrecords'

  model = config.model
  model.name = 'ncsnpp'
  model.scale_by_sigma = True
  model.ema_rate = 0.9999
  model.sigma_max = 1348.
  model.normalization = 'GroupNorm'
  model.nonlinearity = 'swish'
  model.nf = 16
  model.ch_mult = (1, 2, 4, 8, 16, 32, 32, 32)
  model.num_res_blocks = 1
  model.attn_resolutions = (16,)
  model.resamp_with_conv = True
  model.conditional = True
  model.fir = True
  model.fir_kernel = [1, 3, 3, 1]
  model.skip_rescale = True
  model.resblock_type = 'biggan'
  model.progressive = 'output_skip'
  model.progressive_input = 'input_skip'
  model.progressive_combine = 'sum'
  model.attention_type = 'ddpm'
  model.fourier_scale = 16.
  model.init_scale = 0.
  model.conv_size = 3
  return config
