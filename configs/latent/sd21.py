"""Stable Diffusion 2.x (2.1, 768 px, v-prediction) text-to-image at 768 x 768: diffusers' DDIM,
50 steps, guidance 7.5.

  score-sde --mode generate --config configs/latent/sd21.py --workdir runs/sd21 \
      --config.latent.checkpoint=PATH --prompt "a photograph of an astronaut riding a horse"

A single file of the 512 px epsilon model (2.x-base) needs --config.latent.architecture=sd2-base
and 512 x 512 (--config.generate.height=512 --config.generate.width=512); a diffusers folder
says which it is in its scheduler config.
"""
from configs import default_latent_configs


def get_config():
  config = default_latent_configs.get_default_configs()
  config.generate.height = config.generate.width = 768
  return config
