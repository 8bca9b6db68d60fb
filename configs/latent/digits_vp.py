"""A latent score model on the 16 x 16 digits: DDPM++ (VP SDE, continuous) on the 4 x 4 x 2
latents of the digits autoencoder (configs/autoencoder/digits_f4.py), whose workdir
latent.autoencoder names:

  score-sde --config configs/autoencoder/digits_f4.py --workdir runs/digits_ae
  score-sde --config configs/latent/digits_vp.py --workdir runs/digits_latent \
      --config.latent.autoencoder=runs/digits_ae

The scale factor is estimated on the first start (1 / std of the first batch's latents) and
recorded in the run's config.json.
"""

from configs import _latent_fields as latent_fields
from configs.digits.ddpmpp_vp import get_config as get_pixel_config


def get_config():
  config = get_pixel_config()
  latent_fields.add_latent_fields(config)
  config.data.image_size = 16
  config.model.update(ch_mult=(1, 2), attn_resolutions=(2,))
  config.eval.update(enable_bpd=True, bpd_num_samples=64)
  return config
