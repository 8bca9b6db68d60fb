"""The checks and timings that need a GPU, as one short run (the device machine of a session that
has one; see README, Benchmarks):

  python scripts/gpu_check.py [--out gpu_check.json]

1. The tiny Stable Diffusion fixtures (tests/data/sd) on the GPU, in float32 and bfloat16: the
   U-Net, text encoder and decoder outputs and the end-to-end DDIM image against diffusers'
   recorded outputs (bfloat16 runs the U-Net's heads of 8 channels through cuDNN's fused
   attention). The errors are printed and bounded loosely: the GPU's float32 matmuls may use
   TF32.
2. `scripts/benchmark.py stable_diffusion`: SD 1.5 at its published shape with random weights,
   512 x 512 text-to-image in bfloat16, 50 steps, batches 1 and 8: iterations/s, images/s, peak
   memory.

The machine needs the project's pure-Python dependencies besides jax, flax, optax, orbax and
diffrax (ml-collections, grain, tensorflow-datasets, tensorboardX, tokenizers): carry them as
wheels (the device tool's README says how).
"""
import argparse
import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchmark  # noqa: E402
from score_sde import stable_diffusion  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tests', 'data',
                    'sd')
# Largest relative errors accepted: float32 on a GPU (TF32 matmuls), bfloat16 anywhere.
BOUNDS = {'float32': 5e-3, 'bfloat16': 5e-2}


def relative_error(ours, reference) -> float:
  return float(np.max(np.abs(np.asarray(ours) - reference)) / max(1.0, np.max(np.abs(reference))))


def fixture_errors(family: str, dtype: str) -> dict:
  pipe = stable_diffusion.load_pipeline(os.path.join(DATA, f'{family}_diffusers'), dtype=dtype)
  reference = np.load(os.path.join(DATA, f'{family}_reference.npz'))
  with open(os.path.join(DATA, f'{family}_e2e.json')) as f:
    run = json.load(f)
  images = pipe.generate(run['prompt'], run['negative_prompt'], num_steps=10,
                         guidance_scale=run['guidance_scale'],
                         init_latents=reference['e2e_init_latents'], height=32, width=32)
  return {
      'unet': relative_error(pipe.unet(reference['unet_latents'], reference['unet_timesteps'],
                                       reference['unet_context']), reference['unet_output']),
      'text': relative_error(pipe.encode_text(reference['token_ids']), reference['text_hidden']),
      'decoder': relative_error(pipe.vae_decode(reference['vae_decode_latents']),
                                reference['vae_decoded']),
      'e2e_image_max_abs': float(np.max(np.abs(images - reference['e2e_images']))),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='gpu_check.json')
  args = parser.parse_args()
  result = {'devices': [str(d) for d in jax.devices()], 'fixtures': {}}
  for family in ('sd1', 'sd2'):
    for dtype, bound in BOUNDS.items():
      errors = fixture_errors(family, dtype)
      result['fixtures'][f'{family}_{dtype}'] = errors
      print(family, dtype, errors, flush=True)
      assert max(errors['unet'], errors['text'], errors['decoder']) < bound, (family, dtype)
  result['benchmark'] = benchmark.benchmark_stable_diffusion(repeats=3, steps=50, batches=[1, 8])
  with open(args.out, 'w') as f:
    json.dump(result, f, indent=2)
  print(json.dumps(result, indent=2))


if __name__ == '__main__':
  main()
