"""Latent-space score runs (Rombach et al. 2022): config.latent.autoencoder names the
autoencoder, and a score model of the zoo trains on its latents with any SDE and loss.

  latent.autoencoder      the workdir of an autoencoder trained here (training.method =
                          'autoencoder'; its newest checkpoint), or a Stable Diffusion checkpoint
                          (a diffusers folder or a single file: its VAE)
  latent.scale_factor     latents = scale x z; None: the SD checkpoint's scaling factor, or for a
                          run's own autoencoder 1 / std of the first training batch's latents,
                          estimated on the run's first start and recorded in its config.json
  latent.sample_posterior encode to a posterior sample (else its mean)

Batches are encoded inside the jitted training step, on the devices; samples are decoded on
the way out (`LatentSpace.decode`); the score model, losses and samplers see latents as plain
arrays. Images enter the autoencoder in [-1, 1] whatever data.centered says.
"""
import dataclasses
import json
import os
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from score_sde import autoencoder_training, checkpoints, config_checks, datasets, latent
from score_sde import workdir

# Tag folded into a step's key for the posterior sample of its batch.
ENCODE_STREAM = 0x1A7E


def is_latent_run(config) -> bool:
  """Whether the config trains on the latents of config.latent.autoencoder."""
  return bool(config.get('latent') and config.latent.get('autoencoder'))


@dataclasses.dataclass(frozen=True)
class LatentSpace:
  """A frozen autoencoder and the run's latent convention.

  autoencoder, params: the AutoencoderKL and its parameters; image_shape (H, W, C) and
  latent_shape (H/f, W/f, c); scale_factor; sample_posterior; source: where it was read;
  default_scale: the checkpoint's own scaling factor (SD) or None (estimate it).
  """

  autoencoder: object
  params: dict
  image_shape: tuple
  latent_shape: tuple
  scale_factor: float
  sample_posterior: bool
  source: str
  default_scale: float = None

  def encode(self, images, key):
    """images (B, H, W, C) in [-1, 1] -> scaled latents (B, h, w, c); pure jnp."""
    return latent.encode(self.autoencoder, self.params, images, key, self.scale_factor,
                         self.sample_posterior)

  def decode(self, latents):
    """scaled latents (B, h, w, c) -> images (B, H, W, C) in [0, 1], clipped; pure jnp."""
    decoded = latent.decode(self.autoencoder, self.params, latents, self.scale_factor)
    return jnp.clip((decoded + 1.0) / 2.0, 0.0, 1.0)


def _is_autoencoder_run(path: str) -> bool:
  return os.path.isdir(path) and workdir.recorded_field(path, 'training.method') == 'autoencoder'


def _run_autoencoder(path: str):
  """(AutoencoderKL, params, image shape) of the newest checkpoint of an autoencoder run."""
  with open(os.path.join(path, 'config.json')) as f:
    ae_config = ml_collections.ConfigDict(json.load(f))
  parts = autoencoder_training.from_config(ae_config)
  shape = datasets.data_shape(ae_config)
  like = autoencoder_training.init_state(jax.random.PRNGKey(0), parts.autoencoder,
                                         parts.discriminator, parts.objective, parts.optimizer,
                                         parts.optimizer, shape)
  restored = checkpoints.restore_newest(path, like)
  if restored is None:
    raise FileNotFoundError(f'latent.autoencoder = {path!r} is an autoencoder run without a '
                            'checkpoint; train it first (--mode train with its config).')
  return parts.autoencoder, restored[0].params['autoencoder'], shape, None


def _sd_autoencoder(path: str, image_shape: tuple):
  """(AutoencoderKL, params, image shape, scaling factor) of a Stable Diffusion checkpoint's
  VAE, in float32."""
  from score_sde import stable_diffusion  # loads the SD networks' modules only when used
  pipeline = stable_diffusion.load_pipeline(path, dtype='float32')
  return pipeline.vae_net, pipeline.params.vae, image_shape, pipeline.scaling_factor


def _autoencoder(config):
  path = str(config_checks.get(config, 'latent.autoencoder'))
  if not os.path.exists(path):
    raise FileNotFoundError(f'latent.autoencoder = {path!r} does not exist; give the workdir of '
                            'an autoencoder run or a Stable Diffusion checkpoint.')
  if _is_autoencoder_run(path):
    return _run_autoencoder(path)
  if os.path.isdir(path) and os.path.exists(os.path.join(path, 'config.json')):
    raise ValueError(f'latent.autoencoder = {path!r} is the workdir of a run whose '
                     "training.method is not 'autoencoder'.")
  return _sd_autoencoder(path, datasets.data_shape(config))


def load_latent_space(config) -> LatentSpace:
  """The LatentSpace of a latent run's config; its scale factor must be resolved
  (`resolve_scale_factor`) unless the autoencoder brings its own. ValueError when the
  autoencoder was trained on images of another shape than data's."""
  autoencoder, params, trained_shape, default_scale = _autoencoder(config)
  image_shape = datasets.data_shape(config)
  if tuple(trained_shape) != tuple(image_shape):
    raise ValueError(f'latent.autoencoder = {config.latent.autoencoder!r} was trained on images '
                     f'of shape {tuple(trained_shape)}; the data config gives {image_shape}.')
  f, channels = autoencoder.config.downsampling, autoencoder.config.latent_channels
  if image_shape[0] % f or image_shape[1] % f:
    raise ValueError(f'data.image_size = {image_shape[0]} is not divisible by the '
                     f'autoencoder\'s downsampling factor {f}.')
  scale = config.latent.get('scale_factor')
  if scale is None:
    scale = default_scale
  elif not isinstance(scale, (int, float)) or isinstance(scale, bool) or not scale > 0:
    raise ValueError(f'Config field latent.scale_factor = {scale!r} must be a number > 0 (or '
                     'None: estimated).')
  return LatentSpace(autoencoder=autoencoder, params=params, image_shape=tuple(image_shape),
                     latent_shape=(image_shape[0] // f, image_shape[1] // f, channels),
                     scale_factor=None if scale is None else float(scale),
                     sample_posterior=config_checks.boolean(config, 'latent.sample_posterior'),
                     source=str(config.latent.autoencoder), default_scale=default_scale)


def resolve_scale_factor(config, workdir_path: str):
  """`config` with latent.scale_factor set: the given value, else the one recorded in
  workdir/config.json by the run's first start, else the SD checkpoint's, else 1 / std of the
  latents of the first training batch (printed; the caller records it). Other configs are
  returned unchanged."""
  if not is_latent_run(config) or config.latent.get('scale_factor') is not None:
    return config
  resolved = config.copy_and_resolve_references()
  recorded = workdir.recorded_field(workdir_path, 'latent.scale_factor')
  if recorded is not None:
    resolved.latent.scale_factor = float(recorded)
    return resolved
  space = load_latent_space(config)
  if space.default_scale is not None:
    resolved.latent.scale_factor = float(space.default_scale)
    return resolved
  batch_size = config_checks.positive_int(config, 'training.batch_size')
  images = next(datasets.get_dataset(config, 'train', batch_size))['x']
  unit = dataclasses.replace(space, scale_factor=1.0)
  raw = jax.jit(unit.encode)(2.0 * jnp.asarray(images) - 1.0,
                             jax.random.PRNGKey(config_checks.get(config, 'seed')))
  resolved.latent.scale_factor = latent.estimate_scale_factor(raw)
  print(f'latent.scale_factor = {resolved.latent.scale_factor:.6g} (1 / std of the latents of '
        f'the first training batch of {len(images)} images)')
  return resolved


def latent_method(space: LatentSpace, fields: dict, label_arrays: Callable) -> dict:
  """The fields of the score Method of a latent run (methods.Method(**...)) from those of the
  score model on latents (`fields`, methods.score_method_of): batches of images are encoded in
  the steps, snapshot samples decoded. `label_arrays(batch)` gives the conditions."""
  if space.scale_factor is None:
    raise ValueError('latent.scale_factor is unresolved; call '
                     'latent_runs.resolve_scale_factor(config, workdir) first.')
  train_latents, eval_losses, draw = (fields['train_steps'], fields['eval_losses'],
                                      fields['snapshot'])

  def batch_arrays(batch):
    arrays = {k: v for k, v in label_arrays(batch).items() if k != 'x'}
    return {'x': 2.0 * np.asarray(batch['x'], np.float32) - 1.0, **arrays}

  def encode_stack(images, key):
    """(n, B, H, W, C) images -> (n, B, h, w, c) latents."""
    flat = images.reshape(-1, *images.shape[2:])
    return space.encode(flat, key).reshape(*images.shape[:2], *space.latent_shape)

  def train_steps(state, batches):
    key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), ENCODE_STREAM)
    return train_latents(state, {**batches, 'x': encode_stack(batches['x'], key)})

  def eval_latent_losses(state, key, arrays):
    encode_key, loss_key = jax.random.split(key)
    return eval_losses(state, loss_key, {**arrays, 'x': space.encode(arrays['x'], encode_key)})

  def snapshot(state, key, arrays):
    return space.decode(draw(state, key, arrays))

  return dict(initial_state=fields['initial_state'], batch_arrays=batch_arrays,
              train_steps=train_steps, eval_losses=eval_latent_losses,
              snapshot=snapshot if draw is not None else None, data_shape=space.latent_shape)
