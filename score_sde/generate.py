"""The `--mode generate` driver: text-to-image with a Stable Diffusion checkpoint from a config
(configs/latent/sd15.py, sd21.py), one PNG per image and a JSON of every setting.

  score-sde --mode generate --config configs/latent/sd15.py --workdir runs/sd \\
      --config.latent.checkpoint=PATH --prompt "a photograph of an astronaut riding a horse"

Each prompt gets generate.num_images images, drawn generate.batch_size at a time; image k (in
the order prompts x copies) draws its noise from fold_in(PRNGKey(seed), k), so it is the same
whatever the batch size. A tqdm bar counts U-Net evaluations. Outputs go to a new folder
<workdir>/<eval_folder>/generate (generate_2, ... if it exists): image_<k>.png and
settings.json (checkpoint, prompts, seed, sampler and its settings, NFE, seconds).
"""
import json
import os
import time

import jax.numpy as jnp
import numpy as np
import tqdm

from score_sde import config_checks, plots, sampling, stable_diffusion, workdir

# config.sampling fields -> the sampler factories' keywords, per method (see sampling.get_sampler).
_SAMPLER_FIELDS = {
    'pc': {'predictor': 'predictor', 'corrector': 'corrector', 'snr': 'snr',
           'n_steps_each': 'n_steps_each', 'probability_flow': 'probability_flow',
           'noise_removal': 'noise_removal', 'eps': 'eps', 'step_size_rule': 'step_size_rule'},
    'ode': {'ode_solver': 'ode_solver', 'rtol': 'rtol', 'atol': 'atol',
            'noise_removal': 'noise_removal', 'eps': 'eps'},
    'ddim': {'eta': 'eta', 'nfe': 'nfe', 'time_schedule': 'schedule', 'rho': 'rho', 'eps': 'eps',
             'noise_removal': 'denoise'},
    'dpm_solver': {'dpm_solver_variant': 'variant', 'nfe': 'nfe', 'time_schedule': 'schedule',
                   'rho': 'rho', 'eps': 'eps', 'noise_removal': 'denoise'},
    'edm': {'nfe': 'nfe', 'time_schedule': 'schedule', 'rho': 'rho', 's_churn': 's_churn',
            's_min': 's_min', 's_max': 's_max', 's_noise': 's_noise', 'eps': 'eps',
            'noise_removal': 'denoise'},
    'ddim_diffusers': {'eta': 'eta', 'timestep_spacing': 'timestep_spacing',
                       'steps_offset': 'steps_offset', 'set_alpha_to_one': 'set_alpha_to_one'},
}


def sampler_settings(config) -> tuple:
  """(method, num_steps, options) of config.sampling for StableDiffusion.sampler: fields left
  None take the sampler's defaults (the checkpoint scheduler's, for 'ddim_diffusers')."""
  method = config_checks.choice(config, 'sampling.method', sampling.SAMPLING_METHODS)
  fields = 'sampling.ode_steps' if method == 'ode' else 'sampling.steps'
  num_steps = config_checks.get(config, fields)
  if num_steps is not None:
    num_steps = config_checks.positive_int(config, fields)
  options = {}
  for field, keyword in _SAMPLER_FIELDS[method].items():
    value = config_checks.get(config, f'sampling.{field}')
    if value is not None:
      options[keyword] = value
  if method in sampling.DEFAULT_SCHEDULES:
    options.setdefault('schedule', sampling.DEFAULT_SCHEDULES[method])
  return method, num_steps, options


def _check(config, prompts) -> None:
  """Every setting checked before anything is loaded or compiled."""
  checkpoint = config_checks.get(config, 'latent.checkpoint')
  if not checkpoint:
    raise ValueError('Config field latent.checkpoint is not set: give the path of a Stable '
                     'Diffusion checkpoint (a diffusers folder, or a .safetensors / .ckpt file), '
                     'e.g. --config.latent.checkpoint=PATH.')
  if not os.path.exists(checkpoint):
    raise FileNotFoundError(f'Config field latent.checkpoint = {checkpoint!r}: no such file or '
                            'folder.')
  if not prompts or any(not isinstance(p, str) for p in prompts):
    raise ValueError(f'--prompt must be given at least once (one image set per prompt); got '
                     f'{prompts!r}.')
  if config_checks.get(config, 'latent.dtype') is not None:
    config_checks.choice(config, 'latent.dtype', stable_diffusion.DTYPES)
  config_checks.choice(config, 'latent.timesteps', stable_diffusion.TIMESTEPS)
  for field in ('generate.num_images', 'generate.batch_size', 'generate.height',
                'generate.width'):
    config_checks.positive_int(config, field)
  if config_checks.get(config, 'sampling.guidance_scale') is not None:
    config_checks.non_negative(config, 'sampling.guidance_scale')
  sampler_settings(config)


def generate(config, workdir_path: str, prompts, eval_folder: str = 'eval') -> str:
  """Writes generate.num_images images per prompt into a new folder under workdir/eval_folder
  (see the module docstring); returns the folder."""
  _check(config, prompts)
  started = time.time()
  latent = config.latent
  pipe = stable_diffusion.load_pipeline(
      latent.checkpoint, architecture=latent.architecture, tokenizer=latent.tokenizer,
      prediction_type=latent.prediction_type, dtype=latent.dtype)
  loaded = time.time()
  method, num_steps, options = sampler_settings(config)
  gen = config.generate
  guidance_scale = config.sampling.guidance_scale
  image_prompts = [p for p in prompts for _ in range(gen.num_images)]
  pipe.latent_shape(1, gen.height, gen.width)  # refuses sizes the networks cannot take
  out = workdir.fresh_directory(os.path.join(workdir_path, eval_folder, 'generate'))
  records, batch_seconds = [], []
  bar = tqdm.tqdm(desc='U-Net evaluations', unit='eval')
  batches = range(0, len(image_prompts), gen.batch_size)
  for first in batches:
    batch = image_prompts[first:first + gen.batch_size]
    # A short last batch is padded to the batch size, so nothing is compiled twice; image k
    # depends on its index only, and the padding is dropped.
    padded = batch + [batch[-1]] * (gen.batch_size - len(batch))
    tic = time.time()
    latents, nfe = pipe.sample_latents(
        padded, gen.negative_prompt, sampler=method, num_steps=num_steps,
        guidance_scale=guidance_scale, seed=config.seed, height=gen.height, width=gen.width,
        timesteps=latent.timesteps, first_index=first, progress=lambda: bar.update(1), **options)
    images = pipe.latents_to_images(latents)[:len(batch)]
    batch_seconds.append(time.time() - tic)
    if bar.total is None:
      bar.total = bar.n * len(batches)
      bar.refresh()
    nfe = np.broadcast_to(np.asarray(nfe), (len(padded),))
    for k, (prompt, image) in enumerate(zip(batch, images)):
      name = f'image_{first + k:05d}.png'
      plots.save_image(os.path.join(out, name), image)
      records.append({'file': name, 'index': first + k, 'prompt': prompt,
                      'nfe': int(nfe[k])})
  bar.close()
  settings = {
      'checkpoint': os.path.abspath(latent.checkpoint), 'latent': latent.to_dict(),
      'generate': gen.to_dict(), 'sampling': config.sampling.to_dict(), 'seed': config.seed,
      'sampler': method, 'num_steps': num_steps, 'sampler_options': options,
      'guidance_scale': guidance_scale, 'prediction_type': pipe.prediction_type,
      'dtype': jnp.dtype(pipe.dtype).name,
      'images': records, 'nfe_per_image': float(np.mean([r['nfe'] for r in records])),
      'seconds': {'load': loaded - started, 'batches': batch_seconds,
                  'total': time.time() - started,
                  'note': 'the first batch includes compilation'},
  }
  with open(os.path.join(out, 'settings.json'), 'w') as f:
    json.dump(settings, f, indent=2, default=str)
  print(f'Wrote {len(records)} images and settings.json to {out}')
  return out
