"""A tiny autoencoder for single captioned digits ('a handwritten seven'): 8 x 8 x 1 ->
4 x 4 x 2 latents (downsampling 2), 300 steps, under a minute on a CPU. With
configs/latent/captions_text.py it is the quick latent pair of notebooks/latent_diffusion.ipynb
(and of the tests):

  score-sde --config configs/latent/captions_autoencoder.py --workdir runs/captions_ae
  score-sde --config configs/latent/captions_text.py --workdir runs/captions_text \
      --config.latent.autoencoder=runs/captions_ae
"""
from configs.autoencoder.digits_f4 import get_config as digits_autoencoder


def get_config():
  config = digits_autoencoder()
  config.data.update(dataset='digit_captions', image_size=8)
  config.training.update(n_iters=300, snapshot_freq=300, snapshot_freq_for_preemption=300,
                         eval_freq=300, snapshot_sampling=False)
  config.autoencoder.update(block_channels=(16, 32), norm_groups=8, latent_channels=2)
  config.eval.update(begin_ckpt=1, end_ckpt=1)
  return config
