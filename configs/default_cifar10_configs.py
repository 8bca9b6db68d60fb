"""Defaults shared by the CIFAR-10 experiment configs (32x32 RGB, 8-bit).

The official defaults (Song et al. 2021, github.com/yang-song/score_sde) plus the fields this
framework's driver reads beyond them: the Langevin step-size rule and the probability-flow ODE
sampler (config.sampling), the likelihood solver (config.likelihood), the bits/dim evaluation
(eval.bpd_num_samples, eval.bpd_num_repeats, data.dequantization) and optim.amsgrad, which the
official experiment configs set. The CelebA and LSUN defaults are these with their own changes.
"""
import ml_collections
from ml_collections.config_dict import placeholder

from configs import _fast_sampler_fields as fast_sampler_fields


def get_default_configs():
  config = ml_collections.ConfigDict()
  config.seed = 42

  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 128
  training.n_iters = 1300001
  training.snapshot_freq = 50000
  training.log_freq = 50
  training.eval_freq = 100
  training.snapshot_freq_for_preemption = 10000  # extra, overwritten checkpoints for preemption
  training.snapshot_sampling = True  # draw samples at each snapshot
  training.likelihood_weighting = False
  training.continuous = True
  training.n_jitted_steps = 5
  training.reduce_mean = False
  training.label_dropout = placeholder(float)  # class-conditional models; None: 0
  training.edm_p_mean = placeholder(float)  # model.preconditioning 'edm'; None: -1.2
  training.edm_p_std = placeholder(float)  # model.preconditioning 'edm'; None: 1.2

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.n_steps_each = 1
  sampling.noise_removal = True
  sampling.probability_flow = False
  sampling.snr = 0.16
  sampling.step_size_rule = 'batch'  # Langevin norms averaged over the batch, as the official
  sampling.eps = 1e-3  # smallest time of the reverse SDE / ODE; the VE configs set 1e-5
  sampling.ode_solver = 'dopri5'  # method 'ode'; the official uses scipy's RK45
  sampling.rtol = 1e-5
  sampling.atol = 1e-5
  sampling.ode_steps = 100  # 'euler' / 'heun' only
  fast_sampler_fields.add_fast_sampler_fields(sampling)

  config.likelihood = likelihood = ml_collections.ConfigDict()
  likelihood.solver = 'dopri5'
  likelihood.rtol = 1e-5
  likelihood.atol = 1e-5
  likelihood.num_steps = 100  # 'euler' / 'heun' only
  likelihood.divergence = 'hutchinson_rademacher'  # the exact trace: one pass per dimension
  likelihood.num_probes = 1
  likelihood.eps = 1e-5

  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.begin_ckpt = 9
  evaluate.end_ckpt = 26
  evaluate.batch_size = 1024
  evaluate.enable_sampling = False
  evaluate.num_samples = 50000
  evaluate.enable_loss = True
  evaluate.enable_bpd = False
  evaluate.bpd_dataset = 'test'
  evaluate.bpd_num_samples = 10000  # the whole test split
  evaluate.bpd_num_repeats = 5  # passes with fresh dequantization noise, as the official
  # Optional paths: placeholders, so that --config.eval.fid_stats=... can set them.
  evaluate.inception_weights = placeholder(str)  # pytorch-fid's pt_inception-2015-12-05 .pth
  evaluate.fid_stats = placeholder(str)  # scripts/fid_stats.py output; None: no FID / KID

  config.data = data = ml_collections.ConfigDict()
  data.dataset = 'CIFAR10'
  data.image_size = 32
  data.random_flip = True
  data.centered = False
  data.uniform_dequantization = False  # of the training data
  data.dequantization = 'uniform'  # of the bits/dim data: 8-bit images
  data.num_channels = 3
  data.data_dir = placeholder(str)  # tfds data_dir of the array_record files (None: tfds default)
  data.path = placeholder(str)  # 'folder' / 'npz' / FFHQ / CelebAHQ data
  data.shuffle_seed = placeholder(int)  # None: config.seed
  data.num_epochs = placeholder(int)  # None: endless

  config.model = model = ml_collections.ConfigDict()
  model.sigma_min = 0.01
  model.sigma_max = 50.
  model.num_scales = 1000
  model.beta_min = 0.1
  model.beta_max = 20.
  model.beta_schedule = placeholder(str)  # 'scaled_linear' | 'cosine'; None: 'linear'
  model.dropout = 0.1
  model.embedding_type = 'fourier'
  model.num_classes = placeholder(int)  # NCSN++ / DDPM: data classes; None: unconditional
  model.preconditioning = placeholder(str)  # 'edm' (Karras et al. 2022); None: official
  model.sigma_data = placeholder(float)  # model.preconditioning 'edm'; None: 0.5
  model.parameterization = placeholder(str)  # 'velocity' (flows); None: the score's

  config.optim = optim = ml_collections.ConfigDict()
  optim.weight_decay = 0.
  optim.optimizer = 'Adam'
  optim.lr = 2e-4
  optim.beta1 = 0.9
  optim.amsgrad = False
  optim.eps = 1e-8
  optim.warmup = 5000
  optim.grad_clip = 1.
  return config
