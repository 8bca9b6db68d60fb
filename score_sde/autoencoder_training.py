"""Training steps of the KL autoencoder (models/autoencoder.py) with the objective of latent
diffusion (Rombach et al. 2022, App. G; the terms are in autoencoder_losses.py):

  autoencoder:    mean_b[nll_b] + kl_weight mean_b[KL_b] + factor(step) lambda L_G
  discriminator:  factor(step) hinge(D(x), D(x_rec))

with x_rec the decoding of a posterior sample (or of its mean), nll the reconstruction error
(plus perceptual_weight x LPIPS(x, x_rec) at every pixel, as LDM adds it) under one learned
log-scale (params['log_scale']), lambda the adaptive weight from the two
terms' gradients at the decoder's last conv, and factor(step) = 0 before
`discriminator_start`. Without a discriminator (discriminator_weight = 0) the objective is the
first two terms, a beta-VAE's.

Images are NHWC in [-1, 1]. A step updates the autoencoder and then the discriminator, each with
its own optimizer, from the same reconstructions.
"""
import dataclasses
from typing import Callable, Optional

import flax
import jax
import jax.numpy as jnp
import optax

from score_sde import autoencoder_losses as terms
from score_sde import config_checks, datasets, losses, lpips
from score_sde.models import autoencoder as autoencoder_lib
from score_sde.models import init_once, patch_gan

# The decoder's last layer, where the adaptive weight compares the gradients.
LAST_LAYER = ('decoder', 'conv_out', 'kernel')


@dataclasses.dataclass(frozen=True)
class AutoencoderObjective:
  """The objective's settings. LDM's KL-f8 used l1, kl_weight 1e-6, discriminator_weight 0.5
  from step 50,001, on posterior samples."""

  reconstruction: str = 'l1'
  kl_weight: float = 1e-6
  discriminator_weight: float = 0.0
  discriminator_start: int = 0
  sample_posterior: bool = True
  perceptual_weight: float = 0.0

  def __post_init__(self):
    if self.reconstruction not in terms.RECONSTRUCTION_LOSSES:
      raise ValueError(f'reconstruction = {self.reconstruction!r} is not supported; allowed: '
                       f'{list(terms.RECONSTRUCTION_LOSSES)}.')
    for name in ('kl_weight', 'discriminator_weight', 'discriminator_start', 'perceptual_weight'):
      if getattr(self, name) < 0:
        raise ValueError(f'{name} = {getattr(self, name)} must be >= 0.')

  @property
  def adversarial(self) -> bool:
    return self.discriminator_weight > 0


class AutoencoderTrainState(flax.struct.PyTreeNode):
  """step (int32 scalar); params {'autoencoder': ..., 'log_scale': scalar}; the
  discriminator's params and optimizer state (None without one); rng: step k uses
  fold_in(rng, k)."""

  step: jax.Array
  params: dict
  opt_state: optax.OptState
  discriminator_params: Optional[dict]
  discriminator_opt_state: Optional[optax.OptState]
  rng: jax.Array


def init_state(key, autoencoder, discriminator, objective: AutoencoderObjective,
               optimizer: optax.GradientTransformation,
               discriminator_optimizer: Optional[optax.GradientTransformation],
               image_shape: tuple) -> AutoencoderTrainState:
  """Initial parameters for images of `image_shape` (H, W, C); the discriminator only if the
  objective is adversarial."""
  ae_key, d_key, rng = jax.random.split(key, 3)
  images = jnp.zeros((1, *image_shape), jnp.float32)
  params = {'autoencoder': init_once.init_variables(autoencoder, ae_key, images)['params'],
            'log_scale': jnp.zeros((), jnp.float32)}
  d_params = d_state = None
  if objective.adversarial:
    d_params = init_once.init_variables(discriminator, d_key, images)['params']
    d_state = discriminator_optimizer.init(d_params)
  return AutoencoderTrainState(step=jnp.zeros((), jnp.int32), params=params,
                               opt_state=optimizer.init(params), discriminator_params=d_params,
                               discriminator_opt_state=d_state, rng=rng)


def _with_last_layer(params: dict, kernel) -> dict:
  """The autoencoder's params with the decoder's last kernel replaced."""
  decoder = params['decoder']
  conv_out = {**decoder['conv_out'], 'kernel': kernel}
  return {**params, 'decoder': {**decoder, 'conv_out': conv_out}}


def get_autoencoder_loss(autoencoder, discriminator, objective: AutoencoderObjective,
                         perceptual: Optional[Callable] = None) -> Callable:
  """loss(params, discriminator_params, key, images, step) -> (loss, aux) of the autoencoder;
  aux holds the reconstructions (B, H, W, C) and the terms (scalars): nll, kl, reconstruction
  (mean per-pixel error), adversarial (L_G), adaptive_weight, factor, and perceptual (the mean
  LPIPS) when objective.perceptual_weight > 0, which needs `perceptual(x, x_rec) -> (B,)`."""
  if objective.perceptual_weight > 0 and perceptual is None:
    raise ValueError(f'perceptual_weight = {objective.perceptual_weight} needs the perceptual '
                     'distance (lpips.get_lpips_fn).')

  def loss_fn(params, discriminator_params, key, images, step):
    ae = params['autoencoder']
    mean, std = autoencoder.apply({'params': ae}, images, method='encode')
    latents = mean + std * jax.random.normal(key, mean.shape) if objective.sample_posterior \
        else mean

    def decoded_terms(kernel):
      """(nll, L_G) and the reconstructions, as functions of the decoder's last kernel."""
      rec = autoencoder.apply({'params': _with_last_layer(ae, kernel)}, latents, method='decode')
      error = terms.reconstruction_error(images, rec, objective.reconstruction)
      distance = jnp.zeros(images.shape[:1])
      if objective.perceptual_weight > 0:
        distance = perceptual(images, rec)
      per_pixel = error + objective.perceptual_weight * distance.reshape(-1, 1, 1, 1)
      nll = jnp.mean(terms.negative_log_likelihood(per_pixel, params['log_scale']))
      adversarial = jnp.zeros(())
      if objective.adversarial:
        logits = discriminator.apply({'params': discriminator_params}, rec)
        adversarial = terms.generator_adversarial_loss(logits)
      return (nll, adversarial), (rec, jnp.mean(error), jnp.mean(distance))

    kernel = ae['decoder']['conv_out']['kernel']
    (nll, adversarial), (rec, mean_error, mean_distance) = decoded_terms(kernel)
    kl = jnp.mean(terms.gaussian_kl(mean, std))
    loss = nll + objective.kl_weight * kl
    weight = factor = jnp.zeros(())
    if objective.adversarial:
      (nll_grad, adversarial_grad), _ = jax.jacrev(decoded_terms, has_aux=True)(kernel)
      weight = terms.adaptive_weight(nll_grad, adversarial_grad, objective.discriminator_weight)
      factor = terms.discriminator_factor(step, objective.discriminator_start)
      loss = loss + factor * weight * adversarial
    aux = {'reconstructions': rec, 'nll': nll, 'kl': kl, 'reconstruction': mean_error,
           'adversarial': adversarial, 'adaptive_weight': weight, 'factor': factor}
    if objective.perceptual_weight > 0:
      aux['perceptual'] = mean_distance
    return loss, aux

  return loss_fn


def get_discriminator_loss(discriminator, objective: AutoencoderObjective) -> Callable:
  """loss(discriminator_params, images, reconstructions, step) -> factor(step) x the hinge loss
  of D on real images against (gradient-free) reconstructions, each judged in its own call."""

  def loss_fn(discriminator_params, images, reconstructions, step):
    real = discriminator.apply({'params': discriminator_params}, images)
    fake = discriminator.apply({'params': discriminator_params},
                               jax.lax.stop_gradient(reconstructions))
    return (terms.discriminator_factor(step, objective.discriminator_start) *
            terms.hinge_discriminator_loss(real, fake))

  return loss_fn


def get_train_step(autoencoder, discriminator, objective: AutoencoderObjective,
                   optimizer: optax.GradientTransformation,
                   discriminator_optimizer: Optional[optax.GradientTransformation],
                   perceptual: Optional[Callable] = None) -> Callable:
  """train_step(state, images (B, H, W, C) in [-1, 1]) -> (state, metrics): one update of the
  autoencoder, then (adversarial objectives) one of the discriminator. metrics: loss and the
  autoencoder loss's scalar terms, plus discriminator_loss; `perceptual` as in
  `get_autoencoder_loss`."""
  autoencoder_loss = get_autoencoder_loss(autoencoder, discriminator, objective, perceptual)
  discriminator_loss = get_discriminator_loss(discriminator, objective)

  def train_step(state: AutoencoderTrainState, images):
    key = jax.random.fold_in(state.rng, state.step)
    (loss, aux), grads = jax.value_and_grad(autoencoder_loss, has_aux=True)(
        state.params, state.discriminator_params, key, images, state.step)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    state = state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state)
    metrics = {'loss': loss, **{k: v for k, v in aux.items() if k != 'reconstructions'}}
    if objective.adversarial:
      d_loss, d_grads = jax.value_and_grad(discriminator_loss)(
          state.discriminator_params, images, aux['reconstructions'], state.step)
      d_updates, d_state = discriminator_optimizer.update(d_grads, state.discriminator_opt_state,
                                                          state.discriminator_params)
      state = state.replace(
          discriminator_params=optax.apply_updates(state.discriminator_params, d_updates),
          discriminator_opt_state=d_state)
      metrics['discriminator_loss'] = d_loss
    return state.replace(step=state.step + 1), metrics

  return train_step


@dataclasses.dataclass(frozen=True)
class AutoencoderParts:
  """What an autoencoder config builds: the networks, the objective and the optimizer (both
  networks use one, as LDM's do)."""

  autoencoder: autoencoder_lib.AutoencoderKL
  discriminator: patch_gan.PatchDiscriminator
  objective: AutoencoderObjective
  optimizer: optax.GradientTransformation
  perceptual: Optional[Callable] = None


def autoencoder_config(config) -> autoencoder_lib.AutoencoderConfig:
  """The network sizes of config.autoencoder for images of data.num_channels channels."""
  channels = datasets.data_shape(config)[-1]
  try:
    return autoencoder_lib.AutoencoderConfig(
        in_channels=channels, out_channels=channels,
        block_channels=config_checks.positive_ints(config, 'autoencoder.block_channels'),
        layers_per_block=config_checks.positive_int(config, 'autoencoder.layers_per_block'),
        latent_channels=config_checks.positive_int(config, 'autoencoder.latent_channels'),
        norm_groups=config_checks.positive_int(config, 'autoencoder.norm_groups'),
        scaling_factor=1.0)
  except ValueError as error:
    raise ValueError(f'Config section autoencoder: {error}') from None


def from_config(config) -> AutoencoderParts:
  """The autoencoder, discriminator, objective, optimizer and (perceptual_weight > 0) the LPIPS
  distance of config.autoencoder / optim; ValueError naming the field for a bad value, and for
  images the autoencoder cannot halve len(block_channels) - 1 times; FileNotFoundError saying
  where to get the LPIPS files when they are asked for and absent."""
  sizes = autoencoder_config(config)
  image_size = datasets.data_shape(config)[0]
  if image_size % sizes.downsampling:
    raise ValueError(f'data.image_size = {image_size} is not divisible by the downsampling '
                     f'factor {sizes.downsampling} of autoencoder.block_channels = '
                     f'{sizes.block_channels}.')
  reconstruction = config_checks.choice(config, 'autoencoder.reconstruction',
                                        terms.RECONSTRUCTION_LOSSES)
  objective = AutoencoderObjective(
      reconstruction=reconstruction,
      kl_weight=config_checks.non_negative(config, 'autoencoder.kl_weight'),
      discriminator_weight=config_checks.non_negative(config, 'autoencoder.discriminator_weight'),
      discriminator_start=int(config_checks.non_negative(config,
                                                         'autoencoder.discriminator_start')),
      sample_posterior=config_checks.boolean(config, 'autoencoder.sample_posterior'),
      perceptual_weight=config_checks.non_negative(config, 'autoencoder.perceptual_weight'))
  perceptual = None
  if objective.perceptual_weight > 0:
    if image_size < lpips.MIN_SIZE:
      raise ValueError(f'autoencoder.perceptual_weight = {objective.perceptual_weight} needs '
                       f'images of at least {lpips.MIN_SIZE} pixels (LPIPS); data.image_size = '
                       f'{image_size}.')
    weights = lpips.load_lpips(config.autoencoder.get('perceptual_weights'))
    perceptual = lambda x, y: lpips.apply(weights, x, y)  # noqa: E731
  discriminator = patch_gan.PatchDiscriminator(
      channels=config_checks.positive_int(config, 'autoencoder.discriminator_channels'),
      layers=config_checks.positive_int(config, 'autoencoder.discriminator_layers'))
  return AutoencoderParts(autoencoder_lib.AutoencoderKL(sizes), discriminator, objective,
                          losses.get_optimizer(config), perceptual)
