"""Records diffusers' noise schedules and DDIMScheduler runs into
tests/data/diffusers_reference.json, the reference of tests/test_beta_schedules.py and
tests/test_ddim_diffusers.py.

Runs once, in a scratch environment with torch and diffusers (the project never imports them):

    /work/scratch/ref/bin/python scripts/diffusers_reference.py tests/data/diffusers_reference.json

What it records:
  schedules:     DDPMScheduler's betas and alphas_cumprod (first and last 5, and at a few
                 indices) for 'linear', 'scaled_linear' (Stable Diffusion's 0.00085 .. 0.012) and
                 'squaredcos_cap_v2', N = 1000.
  timesteps:     DDIMScheduler.set_timesteps for several (num_steps, spacing, steps_offset).
  img2img:       StableDiffusionImg2ImgPipeline.get_timesteps for several (num_steps, strength).
  trajectories:  whole DDIMScheduler.step runs, driven by the exact epsilon of Gaussian data
                 N(MEAN, diag(STD^2)), eps(x, k) = sqrt(1 - a) (x - sqrt(a) MEAN) / (a STD^2 + 1 -
                 a), a = alphas_cumprod[k], from recorded initial states (4 samples, 3 coordinates)
                 and, for eta > 0, recorded per-step noise (variance_noise), which the test
                 replays; one run starts img2img-style from add_noise(data, noise, timesteps[0]).
"""
import json
import sys
import types

import diffusers
import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionImg2ImgPipeline

MEAN = np.array([0.5, -1.0, 1.5])
STD = np.array([0.3, 1.0, 0.6])
SCHEDULES = {  # name -> DDPMScheduler / DDIMScheduler keywords
    'linear': dict(beta_schedule='linear', beta_start=0.0001, beta_end=0.02),
    'scaled_linear': dict(beta_schedule='scaled_linear', beta_start=0.00085, beta_end=0.012),
    'squaredcos_cap_v2': dict(beta_schedule='squaredcos_cap_v2'),
}
INDICES = [0, 1, 2, 10, 100, 250, 500, 750, 900, 990, 995, 998, 999]
TIMESTEPS = [(50, 'leading', 1), (50, 'leading', 0), (10, 'trailing', 0), (10, 'trailing', 1),
             (7, 'linspace', 0), (7, 'leading', 1), (1, 'leading', 1), (3, 'trailing', 0),
             (250, 'leading', 1), (13, 'linspace', 1)]
IMG2IMG = [(50, 0.75, 'leading', 1), (10, 0.6, 'leading', 1), (10, 1.0, 'trailing', 0),
           (7, 0.3, 'linspace', 0)]
TRAJECTORIES = [  # schedule, num_steps, spacing, steps_offset, set_alpha_to_one, eta, strength
    ('scaled_linear', 50, 'leading', 1, False, 0.0, None),
    ('scaled_linear', 10, 'leading', 1, False, 1.0, None),
    ('squaredcos_cap_v2', 8, 'trailing', 0, True, 0.0, None),
    ('linear', 7, 'linspace', 0, False, 1.0, None),
    ('scaled_linear', 10, 'leading', 1, False, 0.0, 0.6),
]


def floats(tensor) -> list:
  return np.asarray(tensor, np.float64).tolist()


def schedules() -> dict:
  out = {}
  for name, options in SCHEDULES.items():
    scheduler = DDPMScheduler(num_train_timesteps=1000, **options)
    betas, alphas_cumprod = scheduler.betas.numpy(), scheduler.alphas_cumprod.numpy()
    out[name] = {'betas_first': floats(betas[:5]), 'betas_last': floats(betas[-5:]),
                 'indices': INDICES, 'betas': floats(betas[INDICES]),
                 'alphas_cumprod': floats(alphas_cumprod[INDICES])}
  return out


def ddim(name, num_steps, spacing, offset, set_alpha_to_one=False) -> DDIMScheduler:
  scheduler = DDIMScheduler(num_train_timesteps=1000, clip_sample=False, steps_offset=offset,
                            set_alpha_to_one=set_alpha_to_one, timestep_spacing=spacing,
                            **SCHEDULES[name])
  scheduler.set_timesteps(num_steps)
  return scheduler


def img2img_timesteps(scheduler, num_steps, strength) -> list:
  """diffusers' own get_timesteps, on a stand-in pipeline holding only the scheduler."""
  pipeline = types.SimpleNamespace(scheduler=scheduler)
  timesteps, _ = StableDiffusionImg2ImgPipeline.get_timesteps(pipeline, num_steps, strength, 'cpu')
  return timesteps.tolist()


def epsilon(scheduler, x, k):
  a = float(scheduler.alphas_cumprod[k])
  eps = np.sqrt(1 - a) * (x.numpy().astype(np.float64) - np.sqrt(a) * MEAN) / (
      a * STD**2 + 1 - a)
  return torch.tensor(eps, dtype=torch.float32)


def trajectory(rng, name, num_steps, spacing, offset, set_alpha_to_one, eta, strength) -> dict:
  scheduler = ddim(name, num_steps, spacing, offset, set_alpha_to_one)
  record = dict(schedule=name, num_steps=num_steps, timestep_spacing=spacing, steps_offset=offset,
                set_alpha_to_one=set_alpha_to_one, eta=eta, strength=strength)
  timesteps = scheduler.timesteps
  if strength is None:
    x = torch.tensor(rng.normal(size=(4, 3)), dtype=torch.float32)
  else:
    timesteps = torch.tensor(img2img_timesteps(scheduler, num_steps, strength))
    data = torch.tensor(MEAN + STD * rng.normal(size=(4, 3)), dtype=torch.float32)
    noise = torch.tensor(rng.normal(size=(4, 3)), dtype=torch.float32)
    x = scheduler.add_noise(data, noise, timesteps[:1].repeat(4))
    record.update(data=floats(data), noise=floats(noise))
  record['timesteps'] = timesteps.tolist()
  states, step_noise = [floats(x)], []
  for k in timesteps.tolist():
    variance_noise = None
    if eta > 0:
      variance_noise = torch.tensor(rng.normal(size=(4, 3)), dtype=torch.float32)
      step_noise.append(floats(variance_noise))
    x = scheduler.step(epsilon(scheduler, x, k), k, x, eta=eta,
                       variance_noise=variance_noise).prev_sample
    states.append(floats(x))
  record.update(states=states, step_noise=step_noise)
  return record


def main(path):
  rng = np.random.default_rng(0)
  reference = {
      'about': f'scripts/diffusers_reference.py, diffusers {diffusers.__version__}, torch '
               f'{torch.__version__}',
      'gaussian': {'mean': MEAN.tolist(), 'std': STD.tolist()},
      'schedules': schedules(),
      'timesteps': [dict(num_steps=n, timestep_spacing=s, steps_offset=o,
                         timesteps=ddim('scaled_linear', n, s, o).timesteps.tolist())
                    for n, s, o in TIMESTEPS],
      'img2img': [dict(num_steps=n, strength=strength, timestep_spacing=s, steps_offset=o,
                       timesteps=img2img_timesteps(ddim('scaled_linear', n, s, o), n, strength))
                  for n, strength, s, o in IMG2IMG],
      'trajectories': [trajectory(rng, *case) for case in TRAJECTORIES],
  }
  with open(path, 'w') as f:
    json.dump(reference, f)
    f.write('\n')


if __name__ == '__main__':
  main(sys.argv[1])
