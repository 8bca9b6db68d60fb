"""Defaults of the autoencoder configs (configs/autoencoder/): the KL autoencoder of latent
diffusion (Rombach et al. 2022, App. G), trained with `--mode train` (training.method =
'autoencoder') and evaluated with `--mode eval` (PSNR, SSIM, rFID, reconstructions).

`autoencoder_config(dataset, factor)` builds the config of a dataset ('digits', 'CIFAR10', 'CELEBA',
'folder') at downsampling factor 4 or 8. The network follows LDM's KL-f4 (3 latent channels)
and KL-f8 (4) at the widths (128, 256, 512[, 512]); the objective is L1 + 1e-6 KL, with the
PatchGAN from step 50,001 at weight 0.5. The digits configs (16 x 16, a network of width 16)
train on a 2-core CPU in minutes, without the discriminator. LDM also adds LPIPS (weight 1):
set autoencoder.perceptual_weight=1 with the LPIPS files (score_sde/lpips.py says where to
get them).
"""
import ml_collections
from ml_collections.config_dict import placeholder

FACTORS = (4, 8)
DATASETS = ('digits', 'CIFAR10', 'CELEBA', 'folder')


def get_default_configs():
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.training = training = ml_collections.ConfigDict()
  training.method = 'autoencoder'
  training.batch_size = 64
  training.n_iters = 200001
  training.n_jitted_steps = 1
  training.log_freq = 100
  training.eval_freq = 1000
  training.snapshot_freq = 10000
  training.snapshot_freq_for_preemption = 2000
  training.snapshot_sampling = True  # test images beside their reconstructions

  config.autoencoder = autoencoder = ml_collections.ConfigDict()
  autoencoder.block_channels = (128, 256, 512)
  autoencoder.layers_per_block = 2
  autoencoder.latent_channels = 3
  autoencoder.norm_groups = 32
  autoencoder.reconstruction = 'l1'
  autoencoder.kl_weight = 1e-6
  autoencoder.sample_posterior = True
  autoencoder.discriminator_weight = 0.5
  autoencoder.discriminator_start = 50001
  autoencoder.discriminator_channels = 64
  autoencoder.discriminator_layers = 3
  autoencoder.perceptual_weight = 0.0
  autoencoder.perceptual_weights = placeholder(str)

  config.optim = optim = ml_collections.ConfigDict()
  optim.optimizer = 'Adam'
  optim.lr = 4.5e-6 * 64  # LDM: 4.5e-6 per image of the batch
  optim.beta1 = 0.5
  optim.beta2 = 0.9
  optim.eps = 1e-8
  optim.weight_decay = 0.0
  optim.warmup = 0
  optim.grad_clip = -1.0

  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.begin_ckpt = 1
  evaluate.end_ckpt = 20
  evaluate.batch_size = 256
  evaluate.inception_weights = placeholder(str)  # for rFID (None: $SCORE_SDE_INCEPTION_WEIGHTS)

  config.data = data = ml_collections.ConfigDict()
  data.dataset = 'CIFAR10'
  data.image_size = 32
  data.num_channels = 3
  data.random_flip = True
  data.centered = True
  data.uniform_dequantization = False
  data.data_dir = placeholder(str)
  data.path = placeholder(str)
  return config


def autoencoder_config(dataset: str, factor: int):
  """The autoencoder config of `dataset` at downsampling `factor` (see the module docstring)."""
  if dataset not in DATASETS or factor not in FACTORS:
    raise ValueError(f'No autoencoder config for {dataset!r} at factor {factor}; allowed: '
                     f'{list(DATASETS)} x {list(FACTORS)}.')
  config = get_default_configs()
  deep = factor == 8
  config.autoencoder.update(block_channels=(128, 256, 512, 512) if deep else (128, 256, 512),
                            latent_channels=4 if deep else 3)
  if dataset == 'CELEBA':
    config.data.update(dataset='CELEBA', image_size=64)
  elif dataset == 'folder':
    config.data.update(dataset='folder', image_size=256)
    config.training.batch_size = 16
    config.optim.lr = 4.5e-6 * 16
  elif dataset == 'digits':
    config.data.update(dataset='digits', image_size=16, num_channels=1, random_flip=False)
    config.training.update(n_iters=3000, log_freq=100, eval_freq=500, snapshot_freq=1000,
                           snapshot_freq_for_preemption=500)
    config.autoencoder.update(block_channels=(16, 32, 32, 32) if deep else (16, 32, 32),
                              layers_per_block=1, norm_groups=8, latent_channels=4 if deep else 2,
                              discriminator_weight=0.0)
    config.optim.update(lr=1e-3, beta1=0.9, beta2=0.999)
    config.eval.update(begin_ckpt=3, end_ckpt=3)
  return config
