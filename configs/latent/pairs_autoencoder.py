"""The autoencoder of the compositional-digits demo: the KL autoencoder at downsampling factor 4
on 'digit_pairs' (16 x 16 canvases of two digits -> 4 x 4 x 4 latents), 1,000 steps, about 2
minutes on a 2-core CPU. Then configs/latent/pairs_text.py trains the text-conditional latent
model:

  score-sde --config configs/latent/pairs_autoencoder.py --workdir runs/pairs_ae
  score-sde --config configs/latent/pairs_text.py --workdir runs/pairs_text \
      --config.latent.autoencoder=runs/pairs_ae
"""
from configs.default_autoencoder_configs import autoencoder_config


def get_config():
  config = autoencoder_config('digits', 4)
  config.data.dataset = 'digit_pairs'
  config.autoencoder.latent_channels = 4
  config.training.update(n_iters=1000, snapshot_freq=1000, eval_freq=500)
  config.eval.update(begin_ckpt=1, end_ckpt=1)
  return config
