"""`score-sde --mode generate`: text-to-image from a config and a Stable Diffusion checkpoint (the
tiny SD-1.x-shaped fixture), PNGs and a JSON of the settings in a fresh folder."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs.latent import sd15
from score_sde import generate, stable_diffusion

DATA = os.path.join(os.path.dirname(__file__), 'data', 'sd')
CHECKPOINT = os.path.join(DATA, 'sd1_diffusers')
OVERRIDES = ['--config.generate.height=32', '--config.generate.width=32',
             '--config.sampling.steps=4', '--config.generate.num_images=2',
             '--config.generate.batch_size=3', '--config.seed=11']


def test_command_line_writes_images_and_settings(tmp_path):
  workdir = str(tmp_path / 'run')
  earlier = os.path.join(workdir, 'eval', 'generate')
  os.makedirs(earlier)  # an earlier run's folder, which must be left alone
  command = [sys.executable, '-m', 'score_sde.main', '--mode', 'generate', '--workdir', workdir,
             '--config', sd15.__file__, f'--config.latent.checkpoint={CHECKPOINT}',
             '--prompt', 'a red cube', '--prompt', 'a cat', *OVERRIDES]
  subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
  assert not os.listdir(earlier)
  out = os.path.join(workdir, 'eval', 'generate_2')
  with open(os.path.join(out, 'settings.json')) as f:
    settings = json.load(f)
  assert [r['prompt'] for r in settings['images']] == ['a red cube'] * 2 + ['a cat'] * 2
  assert [r['nfe'] for r in settings['images']] == [4] * 4
  assert settings['seed'] == 11 and settings['sampler'] == 'ddim_diffusers'
  assert settings['sampling']['guidance_scale'] == 7.5 and len(settings['seconds']['batches']) == 2
  # Image 3 (the second batch, padded to 3) is the image the pipeline draws for index 3 alone.
  pipe = stable_diffusion.load_pipeline(CHECKPOINT)
  expected = pipe.generate(['a cat'], '', num_steps=4, guidance_scale=7.5, seed=11, height=32,
                           width=32, first_index=3)[0]
  written = np.asarray(Image.open(os.path.join(out, 'image_00003.png')), np.float32) / 255.0
  assert written.shape == (32, 32, 3)
  np.testing.assert_allclose(written, expected, atol=0.5 / 255 + 1e-4)


def test_settings_are_checked_before_anything_is_loaded(tmp_path):
  config = sd15.get_config()
  with pytest.raises(ValueError, match='latent.checkpoint is not set'):
    generate.generate(config, str(tmp_path), ['a cat'])
  config.latent.checkpoint = str(tmp_path / 'nowhere')
  with pytest.raises(FileNotFoundError, match='no such file or folder'):
    generate.generate(config, str(tmp_path), ['a cat'])
  config.latent.checkpoint = CHECKPOINT
  with pytest.raises(ValueError, match='--prompt must be given at least once'):
    generate.generate(config, str(tmp_path), [])
  config.sampling.method = 'heun'
  with pytest.raises(ValueError, match="sampling.method = 'heun' is not supported"):
    generate.generate(config, str(tmp_path), ['a cat'])
  config.sampling.method = 'ddim'
  config.latent.dtype = 'float8'
  with pytest.raises(ValueError, match="latent.dtype = 'float8' is not supported"):
    generate.generate(config, str(tmp_path), ['a cat'])
  assert not os.listdir(tmp_path)


def test_sampler_settings_map_config_fields_to_the_sampler():
  config = sd15.get_config()
  config.sampling.update(method='dpm_solver', steps=12, dpm_solver_variant='3M',
                         noise_removal=False)
  method, steps, options = generate.sampler_settings(config)
  assert (method, steps) == ('dpm_solver', 12)
  assert options['variant'] == '3M' and options['denoise'] is False
  assert options['schedule'] == 'logsnr' and 'nfe' not in options
