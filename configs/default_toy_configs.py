"""Defaults shared by the 2-D toy configs: an MLP score model trained on CPU in about a minute."""
import ml_collections
from ml_collections.config_dict import placeholder

from configs import _fast_sampler_fields as fast_sampler_fields


def get_default_configs():
  config = ml_collections.ConfigDict()
  config.seed = 42

  config.training = training = ml_collections.ConfigDict()
  training.sde = 'vpsde'
  training.continuous = True
  training.reduce_mean = True
  training.likelihood_weighting = False
  training.batch_size = 512
  training.n_iters = 10000
  training.n_jitted_steps = 100
  training.log_freq = 500
  training.eval_freq = 1000
  training.snapshot_freq = 5000
  training.snapshot_freq_for_preemption = 1000  # overwritten checkpoints for preemption
  training.snapshot_sampling = True
  training.label_dropout = placeholder(float)  # class-conditional models; None: 0
  training.edm_p_mean = placeholder(float)  # model.preconditioning 'edm'; None: -1.2
  training.edm_p_std = placeholder(float)  # model.preconditioning 'edm'; None: 1.2

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.method = 'pc'
  sampling.predictor = 'reverse_diffusion'
  sampling.corrector = 'none'
  sampling.snr = 0.16
  sampling.n_steps_each = 1
  sampling.step_size_rule = 'batch'
  sampling.probability_flow = False
  sampling.noise_removal = True
  sampling.eps = 1e-3
  sampling.ode_solver = 'dopri5'  # method 'ode'
  sampling.rtol = 1e-5
  sampling.atol = 1e-5
  sampling.ode_steps = 100  # 'euler' / 'heun'
  fast_sampler_fields.add_fast_sampler_fields(sampling)

  config.likelihood = likelihood = ml_collections.ConfigDict()
  likelihood.solver = 'dopri5'
  likelihood.rtol = 1e-5
  likelihood.atol = 1e-5
  likelihood.num_steps = 100  # 'euler' / 'heun'
  likelihood.divergence = 'exact'  # 2-D data: the exact trace is cheap
  likelihood.num_probes = 1
  likelihood.eps = 1e-5

  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.begin_ckpt = 2  # checkpoint k = step k * training.snapshot_freq: the final one
  evaluate.end_ckpt = 2
  evaluate.batch_size = 10000
  evaluate.num_samples = 10000
  evaluate.enable_loss = True
  evaluate.enable_sampling = True
  evaluate.enable_bpd = True
  evaluate.bpd_dataset = 'test'
  evaluate.bpd_num_samples = 2000  # test points whose likelihood is computed
  evaluate.bpd_num_repeats = 1  # passes over them (fresh dequantization and probes)

  config.data = data = ml_collections.ConfigDict()
  data.dataset = 'checkerboard'
  data.centered = False
  data.dequantization = 'none'  # continuous data; 'uniform' for 8-bit images

  config.model = model = ml_collections.ConfigDict()
  model.name = 'mlp'
  model.nf = 128
  model.num_layers = 4
  model.embedding_type = 'positional'
  model.fourier_scale = 16.0
  model.nonlinearity = 'swish'
  model.dropout = 0.0
  model.scale_by_sigma = False
  model.num_classes = placeholder(int)  # data classes; None: unconditional
  model.preconditioning = placeholder(str)  # 'edm' (Karras et al. 2022); None: official
  model.sigma_data = placeholder(float)  # model.preconditioning 'edm'; None: 0.5
  model.parameterization = placeholder(str)  # 'velocity' (flows); None: the score's
  model.ema_rate = 0.999
  model.num_scales = 1000
  model.beta_min = 0.1
  model.beta_max = 20.0
  model.beta_schedule = placeholder(str)  # 'scaled_linear' | 'cosine'; None: 'linear'
  model.sigma_min = 0.01
  model.sigma_max = 10.0

  config.optim = optim = ml_collections.ConfigDict()
  optim.optimizer = 'Adam'
  optim.lr = 3e-3
  optim.beta1 = 0.9
  optim.eps = 1e-8
  optim.weight_decay = 0.0
  optim.warmup = 500
  optim.grad_clip = 1.0
  return config
