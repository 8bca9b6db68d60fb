"""diffusers' side of the Stable Diffusion step benchmark: seconds per denoising step of the SD 1.5
U-Net (UNet2DConditionModel at its published config, random weights) on 64 x 64 x 4 latents,
float32 on the CPU, unguided (batch 1) and guided (batch 2), median of `--repeats` after one
warm-up call; printed as JSON, to set beside `scripts/benchmark.py stable_diffusion`'s
seconds_per_step_64x64 measured on the same machine in the same session.

Runs in the scratch venv that has torch and diffusers (the project never depends on them):

    /work/scratch/ref/bin/python scripts/diffusers_sd_step.py [--repeats 3] [--threads 2]
"""
import argparse
import json
import time

import numpy as np
import torch
from diffusers import UNet2DConditionModel

# The U-Net config of runwayml/stable-diffusion-v1-5 (unet/config.json), written out.
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=('CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D',
                      'DownBlock2D'),
    up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D',
                    'CrossAttnUpBlock2D'),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, flip_sin_to_cos=True,
    freq_shift=0)


def seconds_per_step(unet, batch: int, repeats: int) -> float:
  latents = torch.randn(batch, 4, 64, 64)
  context = torch.randn(batch, 77, 768)
  timesteps = torch.full((batch,), 500)
  with torch.no_grad():
    unet(latents, timesteps, context)
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      unet(latents, timesteps, context)
      times.append(time.perf_counter() - start)
  return float(np.median(times))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--threads', type=int, default=2)
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  unet = UNet2DConditionModel(**SD15_UNET).eval()
  result = {'parameters': sum(p.numel() for p in unet.parameters()),
            'torch': torch.__version__, 'threads': args.threads,
            'unguided_batch_1': seconds_per_step(unet, 1, args.repeats),
            'guided_batch_1': seconds_per_step(unet, 2, args.repeats)}
  print(json.dumps(result, indent=2))


if __name__ == '__main__':
  main()
