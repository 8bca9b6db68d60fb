"""Stable Diffusion 1.x (1.5) text-to-image at 512 x 512: diffusers' DDIM, 50 steps, guidance 7.5.

  score-sde --mode generate --config configs/latent/sd15.py --workdir runs/sd15 \
      --config.latent.checkpoint=PATH --prompt "a photograph of an astronaut riding a horse"

PATH: a diffusers folder (runwayml/stable-diffusion-v1-5's layout) or a single .safetensors /
.ckpt file (then also --config.latent.tokenizer=DIR, e.g. the tokenizer/ folder of any SD 1.x or
openai/clip-vit-large-patch14 download).
"""
from configs import default_latent_configs


def get_config():
  config = default_latent_configs.get_default_configs()
  config.generate.height = config.generate.width = 512
  return config
