"""Stable Diffusion 1.x / 2.x as objects of this framework: `load_pipeline(path)` reads a diffusers
folder or a single-file checkpoint (score_sde.sd_checkpoints) into a `StableDiffusion`, whose
noise process is a discrete VP SDE with the checkpoint's schedule (Stable Diffusion's: scaled-
linear betas 0.00085 .. 0.012 over 1000 steps) and whose U-Net gives a score on latents, so that
every sampler, classifier-free guidance, inpainting and the likelihood of this framework run on
it unchanged.

Latents z (B, H/f, W/f, C) are the VAE's raw latents times its scaling factor; images are NHWC,
in [-1, 1] for the VAE and in [0, 1] from `generate`.

Time. With `timesteps='discrete'` (the default) the score at time t asks the U-Net at the chain's
step i = floor(t (N - 1) / T), with that step's alphabar_i: the network only ever sees its
training steps, and the samplers run on those steps (continuous=False). With 'continuous' the
score at t uses the SDE's continuous kernel alpha(t), sigma(t) and asks the U-Net at the
fractional step whose log-SNR equals log(alpha(t) / sigma(t)) (interpolated linearly in the
chain's log-SNRs, as k-diffusion does): a smooth score for the adaptive ODE solvers and the
likelihood.
"""
import dataclasses
import functools
import inspect
import os
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from score_sde import controllable, likelihood, prediction
from score_sde import sampling
from score_sde import sd_checkpoints as checkpoints
from score_sde import sd_single_file
from score_sde import sde as sde_lib
from score_sde.models import autoencoder, clip_text, clip_tokenizer, unet_ldm
from score_sde.sampling import ddim_diffusers, grid, guidance, ode, start, streams

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
TIMESTEPS = ('discrete', 'continuous')
# The registered samplers but 'consistency': a Stable Diffusion U-Net is no consistency model.
SAMPLERS = tuple(method for method in sampling.SAMPLING_METHODS if method != 'consistency')


def vp_sde(schedule: checkpoints.Schedule) -> sde_lib.VPSDE:
  """The VP SDE whose discrete chain has the scheduler's betas: beta_min = N beta_start,
  beta_max = N beta_end (e.g. 0.85 and 12 for Stable Diffusion)."""
  n = schedule.num_train_timesteps
  return sde_lib.VPSDE(beta_min=n * schedule.beta_start, beta_max=n * schedule.beta_end, N=n,
                       beta_schedule=checkpoints.BETA_SCHEDULES[schedule.beta_schedule])


@dataclasses.dataclass(frozen=True)
class Params:
  """The parameters of the three networks (flax params trees of jax arrays)."""

  unet: dict
  vae: dict
  text: dict


class StableDiffusion:
  """A loaded pipeline: tokenizer, text encoder, U-Net, autoencoder and noise process.

  Networks: tokenize, encode_text, unet, vae_encode, vae_decode (the raw networks, for probing);
  scores: score_fn (a plain score_fn(x, t) on latents for any sampler), guided or not; images:
  generate, img2img, inpaint; likelihood: latent_log_likelihood. Parameters are held in the
  computation dtype `dtype`; network outputs are returned as float32.
  """

  def __init__(self, architecture: checkpoints.Architecture, params: Params,
               tokenizer: clip_tokenizer.CLIPTokenizer, dtype=jnp.float32):
    self.architecture, self.params, self.tokenizer = architecture, params, tokenizer
    self.dtype = dtype
    self.unet_net = unet_ldm.UNet(architecture.unet, dtype=dtype)
    self.vae_net = autoencoder.AutoencoderKL(architecture.vae, dtype=dtype)
    self.text_net = clip_text.CLIPTextTransformer(architecture.text, dtype=dtype)
    self.sde = vp_sde(architecture.schedule)
    self.prediction_type = architecture.prediction_type
    self._programs = {}

  # -------------------------------------------------------------------------------------------
  # The networks.

  @property
  def latent_channels(self) -> int:
    return self.architecture.vae.latent_channels

  @property
  def scaling_factor(self) -> float:
    return self.architecture.vae.scaling_factor

  def tokenize(self, prompts: Sequence[str]) -> np.ndarray:
    """Token ids int32 (B, 77) of a list of prompts."""
    return self.tokenizer.tokenize(prompts)

  def encode_text(self, ids, penultimate: bool = False) -> jax.Array:
    """Text hidden states (B, 77, D) float32 of token ids (B, 77): the last hidden state (after
    the final LayerNorm), or with `penultimate` the penultimate layer's output (before it)."""
    last, states = _apply(self.text_net, '__call__', self.params.text,
                          jnp.asarray(ids, jnp.int32))
    return states[-2] if penultimate else last

  def _unet_output(self, params, latents, timesteps, context):
    return self.unet_net.apply({'params': params}, latents, timesteps,
                               context).astype(jnp.float32)

  def unet(self, latents, timesteps, context) -> jax.Array:
    """The raw U-Net output (epsilon or v, see `prediction_type`), (B, h, w, C) float32, of
    latents (B, h, w, C), timesteps (B,) (the chain's steps 0 .. N - 1; fractional ones are
    interpolated by the sinusoidal features) and context (B, S, D)."""
    return _apply(self.unet_net, '__call__', self.params.unet, jnp.asarray(latents),
                  jnp.asarray(timesteps), jnp.asarray(context))

  def vae_encode(self, images) -> tuple:
    """(mean, std) (B, H/f, W/f, C) float32 of the posterior over raw latents of images
    (B, H, W, 3) in [-1, 1]."""
    return _apply(self.vae_net, 'encode', self.params.vae, jnp.asarray(images))

  def vae_decode(self, latents) -> jax.Array:
    """The decoder's output (B, f h, f w, 3) float32, unclamped, of raw latents (B, h, w, C)."""
    return _apply(self.vae_net, 'decode', self.params.vae, jnp.asarray(latents))

  def images_to_latents(self, images) -> jax.Array:
    """Latents of the diffusion model (posterior means times the scaling factor) of images
    (B, H, W, 3) in [0, 1]."""
    return self.vae_encode(2.0 * jnp.asarray(images) - 1.0)[0] * self.scaling_factor

  def latents_to_images(self, latents) -> np.ndarray:
    """Images (B, H, W, 3) in [0, 1] (numpy float32) of diffusion latents."""
    decoded = self.vae_decode(jnp.asarray(latents) / self.scaling_factor)
    return np.asarray(jnp.clip(decoded / 2.0 + 0.5, 0.0, 1.0))

  # -------------------------------------------------------------------------------------------
  # Scores.

  def _fractional_steps(self, t):
    """The fractional chain steps (B,) whose log-SNR (linear in the step) equals the continuous
    kernel's at t (B,); clipped to [0, N - 1]."""
    abar = self.sde.alphas_cumprod
    chain = 0.5 * (np.log(abar) - np.log1p(-abar))  # log-SNR of each step, decreasing
    lmc = self.sde.log_mean_coeff(t)
    lam = lmc - 0.5 * jnp.log(-jnp.expm1(2.0 * lmc))
    return jnp.interp(lam, jnp.asarray(chain[::-1], jnp.float32),
                      jnp.arange(self.sde.N - 1, -1, -1, dtype=jnp.float32))

  def _kernel(self, t, timesteps: str):
    """(network timesteps, alpha, sigma), each (B,), of times t (B,)."""
    if timesteps == 'discrete':
      index = self.sde.timestep_index(t)
      return (index, jnp.asarray(self.sde.sqrt_alphas_cumprod, jnp.float32)[index],
              jnp.asarray(self.sde.sqrt_1m_alphas_cumprod, jnp.float32)[index])
    lmc = self.sde.log_mean_coeff(t)
    return self._fractional_steps(t), jnp.exp(lmc), jnp.sqrt(-jnp.expm1(2.0 * lmc))

  def _score_fn(self, unet_params, context, null_context=None, guidance_scale=None,
                timesteps: str = 'discrete') -> Callable:
    """score_fn(x, t) with the parameters as an argument (for jitted programs); see score_fn."""
    if timesteps not in TIMESTEPS:
      raise ValueError(f'timesteps = {timesteps!r} is not supported; allowed: {list(TIMESTEPS)}.')

    def epsilon(x, t, context):
      steps, alpha, sigma = self._kernel(t, timesteps)
      output = self._unet_output(unet_params, x, steps, context)
      return prediction.epsilon_from_output(output, x, alpha, sigma, self.prediction_type), sigma

    def score_fn(x, t):
      if guidance_scale is None:
        eps, sigma = epsilon(x, t, _batch_of(context, x))
      else:
        both, sigma = epsilon(jnp.concatenate([x, x]), jnp.concatenate([t, t]), jnp.concatenate(
            [_batch_of(context, x), _batch_of(null_context, x)]))
        sigma = sigma[:x.shape[0]]
        eps = guidance.combine(both[:x.shape[0]], both[x.shape[0]:], guidance_scale)
      return prediction.score_from_epsilon(eps, sigma)

    return score_fn

  def score_fn(self, context, null_context=None, guidance_scale=None,
               timesteps: str = 'discrete') -> Callable:
    """score_fn(x, t) -> like x: the score of latents x (B, h, w, C) at times t (B,) in [0, T]
    given text hidden states `context` ((B, S, D), or (1, S, D) for every sample). With a
    guidance_scale w, classifier-free guidance against `null_context` (the negative prompt's,
    or the empty prompt's): (1 - w) s(x | null) + w s(x | context), one U-Net call on both
    halves; w = 1 gives the conditional score exactly. `timesteps`: see the module docstring."""
    if guidance_scale is not None and null_context is None:
      raise ValueError('guidance_scale needs null_context, the hidden states of the negative (or '
                       'empty) prompt.')
    return self._score_fn(self.params.unet, context, null_context, guidance_scale, timesteps)

  # -------------------------------------------------------------------------------------------
  # Samplers.

  def sampler(self, method: str, num_steps: Optional[int], timesteps: str = 'discrete',
              t_start: Optional[float] = None, **options):
    """The registered sampler `method` (sampling.SAMPLING_METHODS) on this pipeline's SDE, as
    sample(key, score_fn, shape, first_index=0, *, x_start=None, ...) -> (latents, nfe).

    num_steps: its steps ('pc' in 'discrete' time runs the chain's N steps: None or N; 'ode'
    uses it only for the fixed-step solvers). options: the keyword arguments of its factory
    (sampling.get_<method>_sampler; for 'ode' also ode_solver, rtol, atol). 'ddim_diffusers'
    defaults to the checkpoint scheduler's steps_offset, set_alpha_to_one and timestep_spacing.
    """
    if method not in SAMPLERS:
      raise ValueError(f'sampler = {method!r} is not supported; allowed: {list(SAMPLERS)}.')
    if timesteps not in TIMESTEPS:
      raise ValueError(f'timesteps = {timesteps!r} is not supported; allowed: {list(TIMESTEPS)}.')
    continuous = timesteps == 'continuous'
    sde, kwargs = self.sde, dict(options)
    if method == 'ddim_diffusers':
      if continuous:
        raise ValueError("sampler 'ddim_diffusers' runs on the chain's own steps: use "
                         "timesteps='discrete'.")
      settings = dict(self.architecture.scheduler)
      if settings.get('clip_sample') or settings.get('thresholding'):
        raise ValueError('The checkpoint\'s scheduler sets clip_sample or thresholding, which '
                         "'ddim_diffusers' does not reproduce.")
      for name in ('steps_offset', 'set_alpha_to_one', 'timestep_spacing'):
        if name in settings:
          kwargs.setdefault(name, settings[name])
      kwargs['num_steps'] = num_steps
    elif method == 'pc':
      if continuous:
        sde = dataclasses.replace(sde, N=num_steps or sde.N)
      elif num_steps not in (None, sde.N):
        raise ValueError(f"sampler 'pc' in discrete time runs the chain's {sde.N} steps; got "
                         f"num_steps = {num_steps}. Use timesteps='continuous' for fewer.")
    elif method == 'ode':
      solver = {k: kwargs.pop(k) for k in ('ode_solver', 'rtol', 'atol') if k in kwargs}
      if 'ode_solver' in solver:
        solver['solver'] = solver.pop('ode_solver')
      kwargs['solver'] = ode.ODESolver(num_steps=num_steps or 100, **solver)
      kwargs['continuous'] = continuous
    else:
      kwargs.update(num_steps=num_steps, continuous=continuous)
    factory = _FACTORIES[method]
    _check_options(factory, kwargs, method)
    return factory(sde, t_start=t_start, **kwargs)

  def _contexts(self, prompts, negative_prompt, guidance_scale) -> tuple:
    """Hidden states (B, 77, D) of the prompts and of the negative prompts (the empty prompt by
    default; the prompts' own when there is no guidance, unused then)."""
    if isinstance(prompts, str) or not prompts:
      raise ValueError(f'prompts must be a non-empty list of strings; got {prompts!r}.')
    context = self.encode_text(self.tokenize(prompts))
    if guidance_scale is None:
      return context, context
    if negative_prompt is None or isinstance(negative_prompt, str):
      negative_prompt = [negative_prompt or ''] * len(prompts)
    if len(negative_prompt) != len(prompts):
      raise ValueError(f'{len(negative_prompt)} negative prompts for {len(prompts)} prompts.')
    return context, self.encode_text(self.tokenize(negative_prompt))

  def latent_shape(self, batch: int, height: Optional[int] = None,
                   width: Optional[int] = None) -> tuple:
    """(batch, height / f, width / f, C) for images of height x width pixels (default: the
    checkpoint's sample size); ValueError unless both are multiples of f times the U-Net's
    downsampling."""
    f = self.architecture.vae.downsampling
    multiple = f * self.architecture.unet.downsampling
    height = height or self.architecture.sample_size
    width = width or self.architecture.sample_size
    for name, value in (('height', height), ('width', width)):
      if not isinstance(value, int) or value < multiple or value % multiple:
        raise ValueError(f'{name} = {value!r} must be a positive multiple of {multiple} (the '
                         f'VAE downsamples by {f}, the U-Net by '
                         f'{self.architecture.unet.downsampling}).')
    return (batch, height // f, width // f, self.latent_channels)

  def _program(self, method, num_steps, timesteps, t_start, options, shape, guided: bool,
               given_start: bool, counted: bool):
    """The jitted run(unet_params, key, context, null_context, guidance_scale, x_start,
    first_index) -> (latents, nfe) of one sampler setting, compiled once per setting."""
    name = ('sample', method, num_steps, timesteps, t_start, tuple(sorted(options.items())),
            shape, guided, given_start, counted)
    if name in self._programs:
      return self._programs[name]
    sample = self.sampler(method, num_steps, timesteps, t_start, **options)
    one_at_a_time = method == 'ode'  # it solves each sample alone, calling the score on one

    def run(unet_params, key, context, null_context, guidance_scale, x_start, first_index):
      def draw(context, null_context, x_start, first, batch_shape):
        score = self._score_fn(unet_params, context, null_context,
                               guidance_scale if guided else None, timesteps)
        if counted:
          score = _counting(score, self._on_evaluation)
        return sample(key, score, batch_shape, first,
                      x_start=x_start if given_start else None)

      if not one_at_a_time:
        return draw(context, null_context, x_start, first_index, shape)
      one = (1, *shape[1:])
      latents, nfe = jax.vmap(lambda c, n, x, k: draw(c[None], n[None], x[None], first_index + k,
                                                      one))(
          context, null_context, x_start if given_start else jnp.zeros(shape),
          jnp.arange(shape[0]))
      return latents.reshape(shape), nfe.reshape(shape[0])

    return self._compiled(name, run)

  def _compiled(self, name: tuple, function):
    """jax.jit(function), kept under `name` (a program's settings) so that it compiles once."""
    self._programs[name] = jax.jit(function)
    return self._programs[name]

  def _on_evaluation(self):
    """Called (from the device, through jax.debug.callback) at every U-Net evaluation of a run
    that asked for progress."""
    if self._progress is not None:
      self._progress()

  _progress = None

  def sample_latents(self, prompts: Sequence[str], negative_prompt=None, *,
                     sampler: str = 'ddim_diffusers', num_steps: Optional[int] = 50,
                     guidance_scale: Optional[float] = 7.5, init_latents=None, seed: int = 0,
                     height: Optional[int] = None, width: Optional[int] = None,
                     timesteps: str = 'discrete', t_start: Optional[float] = None,
                     first_index: int = 0, progress: Optional[Callable[[], None]] = None,
                     **options) -> tuple:
    """(latents (B, h, w, C), nfe) of one image per prompt: see `generate`. With t_start the run
    starts there from init_latents, the latents at that time."""
    shape = self.latent_shape(len(prompts), height, width)
    context, null_context = self._contexts(prompts, negative_prompt, guidance_scale)
    if init_latents is not None and tuple(np.shape(init_latents)) != shape:
      raise ValueError(f'init_latents have shape {np.shape(init_latents)}; {len(prompts)} images '
                       f'of this size need {shape}.')
    run = self._program(sampler, num_steps, timesteps, t_start, options, shape,
                        guidance_scale is not None, init_latents is not None,
                        progress is not None)
    self._progress = progress
    try:
      latents, nfe = run(self.params.unet, jax.random.PRNGKey(seed), context, null_context,
                         jnp.float32(guidance_scale or 0.0),
                         None if init_latents is None else jnp.asarray(init_latents, jnp.float32),
                         jnp.int32(first_index))
      latents = jax.block_until_ready(latents)
    finally:
      self._progress = None
    return latents, nfe

  def generate(self, prompts: Sequence[str], negative_prompt=None, *,
               sampler: str = 'ddim_diffusers', num_steps: Optional[int] = 50,
               guidance_scale: Optional[float] = 7.5, init_latents=None, seed: int = 0,
               height: Optional[int] = None, width: Optional[int] = None,
               timesteps: str = 'discrete', first_index: int = 0,
               progress: Optional[Callable[[], None]] = None, **options) -> np.ndarray:
    """Text-to-image: images (B, H, W, 3) in [0, 1], one per prompt.

    negative_prompt: a string or one per prompt (default ''), the null context of classifier-
    free guidance at guidance_scale (None: no guidance, the conditional score alone). sampler:
    any of sampling.SAMPLING_METHODS ('ddim_diffusers': diffusers' DDIMScheduler, which with the
    same init_latents gives diffusers' image), with num_steps steps and the factory's `options`
    (see `sampler`). init_latents (B, h, w, C): the initial noise (default: drawn from seed).
    Image k draws its noise from fold_in(PRNGKey(seed), first_index + k), so it is the same
    whatever the batch. progress(), if given, is called at every U-Net evaluation.
    """
    latents, _ = self.sample_latents(
        prompts, negative_prompt, sampler=sampler, num_steps=num_steps,
        guidance_scale=guidance_scale, init_latents=init_latents, seed=seed, height=height,
        width=width, timesteps=timesteps, first_index=first_index, progress=progress, **options)
    return self.latents_to_images(latents)

  def _start_level(self, t_start: float, timesteps: str) -> tuple:
    """alpha, sigma (floats) of the state a run from t_start starts at: the chain's step at or
    below t_start in discrete time, the continuous kernel at t_start otherwise."""
    if timesteps == 'discrete':
      abar = self.sde.alphas_cumprod[grid.step_at_or_below(self.sde, t_start)]
      return float(np.sqrt(abar)), float(np.sqrt(1.0 - abar))
    alpha, sigma = grid.alpha_sigma(self.sde, t_start)
    return float(alpha), float(sigma)

  def strength_to_time(self, strength: float, sampler: str, num_steps: int,
                       timesteps: str = 'discrete', **options) -> float:
    """The t_start of img2img at `strength` in (0, 1]: strength T (on a chain step in discrete
    time); for 'ddim_diffusers' the time of the first timestep diffusers' img2img keeps."""
    if not 0 < strength <= 1:
      raise ValueError(f'strength = {strength} must lie in (0, 1].')
    if sampler == 'ddim_diffusers':
      settings = dict(self.architecture.scheduler)
      return ddim_diffusers.strength_start_time(
          self.sde, num_steps, strength,
          options.get('timestep_spacing', settings.get('timestep_spacing', 'leading')),
          options.get('steps_offset', settings.get('steps_offset', 1)))
    t = strength * self.sde.T
    if timesteps == 'discrete':
      t = grid.step_at_or_below(self.sde, t) * self.sde.T / (self.sde.N - 1)
    return t

  def img2img(self, images, prompts: Sequence[str], negative_prompt=None, *,
              strength: float = 0.75, sampler: str = 'ddim', num_steps: Optional[int] = 50,
              guidance_scale: Optional[float] = 7.5, seed: int = 0, timesteps: str = 'discrete',
              first_index: int = 0, init_latents=None, noise=None, **options) -> np.ndarray:
    """SDEdit (Meng et al. 2022): clean latents z0 are noised to t_start =
    `strength_to_time(strength, ...)`, x = alpha z0 + sigma e, and the sampler solves from there;
    returns images (B, H, W, 3) in [0, 1]. z0: the posterior means (times the scaling factor)
    of images (B, H, W, 3) in [0, 1], or init_latents (then images may be None); e: `noise`
    (B, h, w, C), by default the prior draw of image k (fold_in(PRNGKey(seed), first_index + k)).
    With 'ddim_diffusers' this is diffusers' img2img. Other arguments as in `generate`."""
    t_start = self.strength_to_time(strength, sampler, num_steps, timesteps, **options)
    clean = (self.images_to_latents(images) if init_latents is None
             else jnp.asarray(init_latents, jnp.float32))
    if noise is None:
      keys = streams.sample_keys(jax.random.PRNGKey(seed), first_index, clean.shape[0])
      noise = start.prior_draws(self.sde, keys, clean.shape)
    alpha, sigma = self._start_level(t_start, timesteps)
    f = self.architecture.vae.downsampling
    latents, _ = self.sample_latents(
        prompts, negative_prompt, sampler=sampler, num_steps=num_steps,
        guidance_scale=guidance_scale, init_latents=alpha * clean + sigma * jnp.asarray(noise),
        seed=seed, height=clean.shape[1] * f, width=clean.shape[2] * f, timesteps=timesteps,
        t_start=t_start, first_index=first_index, **options)
    return self.latents_to_images(latents)

  # -------------------------------------------------------------------------------------------
  # Inpainting and the likelihood.

  def latent_mask(self, mask) -> jax.Array:
    """A pixel mask (B, H, W) or (B, H, W, 1), 1 = known, as latents' mask (B, h, w, 1): a
    latent is known where all f x f pixels it covers are."""
    mask = jnp.asarray(mask, jnp.float32)
    mask = mask[..., None] if mask.ndim == 3 else mask
    f = self.architecture.vae.downsampling
    b, h, w, _ = mask.shape
    blocks = mask.reshape(b, h // f, f, w // f, f, 1)
    return (jnp.min(blocks, axis=(2, 4)) >= 0.5).astype(jnp.float32)

  def inpaint(self, images, mask, prompts: Sequence[str], negative_prompt=None, *,
              sampler: str = 'ddim', num_steps: Optional[int] = 50,
              guidance_scale: Optional[float] = 7.5, seed: int = 0, timesteps: str = 'discrete',
              first_index: int = 0, **options) -> np.ndarray:
    """Fills images (B, H, W, 3) in [0, 1] where mask (B, H, W[, 1]) is 0, by the replacement
    method in latent space (score_sde.controllable.inpaint: after every step the known latents,
    noised to the state's level, replace the state's); the sampler must take `project` ('pc',
    'ddim', 'ddim_diffusers'). Known pixels are returned unchanged. Returns images in [0, 1]."""
    if sampler not in PROJECTING_SAMPLERS:
      raise ValueError(f'inpaint needs a sampler that takes project=: one of '
                       f'{list(PROJECTING_SAMPLERS)}; got {sampler!r}.')
    images = jnp.asarray(images, jnp.float32)
    self.latent_shape(images.shape[0], images.shape[1], images.shape[2])
    known = self.images_to_latents(images)
    latent_mask = self.latent_mask(mask)
    context, null_context = self._contexts(prompts, negative_prompt, guidance_scale)
    name = ('inpaint', sampler, num_steps, timesteps, tuple(sorted(options.items())),
            known.shape, guidance_scale is None)
    run = self._programs.get(name)
    if run is None:
      sample = self.sampler(sampler, num_steps, timesteps, None, **options)
      kernel = self._discrete_kernel if timesteps == 'discrete' else None

      def inpainted(unet_params, key, context, null_context, scale, known, latent_mask, first):
        score = self._score_fn(unet_params, context, null_context,
                               None if guidance_scale is None else scale, timesteps)
        return controllable.inpaint(key, score, self.sde, sample, known, latent_mask, first,
                                    kernel=kernel)[0]

      run = self._compiled(name, inpainted)
    latents = run(self.params.unet, jax.random.PRNGKey(seed), context, null_context,
                  jnp.float32(guidance_scale or 0.0), known, latent_mask,
                  jnp.int32(first_index))
    pixel_mask = jnp.asarray(mask, jnp.float32)
    pixel_mask = pixel_mask[..., None] if pixel_mask.ndim == 3 else pixel_mask
    return np.asarray(pixel_mask * images + (1.0 - pixel_mask) * self.latents_to_images(latents))

  def _discrete_kernel(self, t):
    """alpha, sigma (B,) of the chain's step nearest t (B,): the level of a discrete-time
    sampler's state at node time t."""
    index = jnp.clip(jnp.round(t * (self.sde.N - 1) / self.sde.T), 0, self.sde.N - 1)
    index = index.astype(jnp.int32)
    return (jnp.asarray(self.sde.sqrt_alphas_cumprod, jnp.float32)[index],
            jnp.asarray(self.sde.sqrt_1m_alphas_cumprod, jnp.float32)[index])

  def latent_log_likelihood(self, latents, prompts: Sequence[str], negative_prompt=None, *,
                            guidance_scale: Optional[float] = None,
                            timesteps: str = 'continuous', seed: int = 0,
                            solver: ode.ODESolver = ode.ODESolver(),
                            divergence: str = 'hutchinson_rademacher', num_probes: int = 1,
                            eps: float = 1e-3) -> tuple:
    """(log p (B,) in nats, bits per latent dimension (B,), nfe (B,)) of diffusion latents
    (B, h, w, C) given their prompts, by the probability-flow ODE of score_fn (score_sde.
    likelihood: the instantaneous change of variables, the prior in place of p_T). These are
    densities of latents, not of images. Sample k draws its probes from fold_in(seed key, k)."""
    latents = jnp.asarray(latents, jnp.float32)
    self.latent_shape(latents.shape[0], latents.shape[1] * self.architecture.vae.downsampling,
                      latents.shape[2] * self.architecture.vae.downsampling)
    context, null_context = self._contexts(prompts, negative_prompt, guidance_scale)
    name = ('likelihood', solver, divergence, num_probes, eps, timesteps, latents.shape,
            guidance_scale is None)
    run = self._programs.get(name)
    if run is None:
      log_likelihood = likelihood.get_log_likelihood_fn(
          self.sde, solver=solver, divergence=divergence, num_probes=num_probes, eps=eps,
          continuous=timesteps == 'continuous')

      def log_likelihoods(unet_params, key, context, null_context, scale, latents):
        def one(k, c, n, z):
          score = self._score_fn(unet_params, c[None], n[None],
                                 None if guidance_scale is None else scale, timesteps)
          logp, _, nfe = log_likelihood(jax.random.fold_in(key, k), score, z[None])
          return logp[0], nfe[0]

        return jax.vmap(one)(jnp.arange(latents.shape[0]), context, null_context, latents)

      run = self._compiled(name, log_likelihoods)
    logp, nfe = run(self.params.unet, jax.random.PRNGKey(seed), context, null_context,
                    jnp.float32(guidance_scale or 0.0), latents)
    dim = np.prod(latents.shape[1:])
    return logp, -logp / (dim * np.log(2.0)), nfe


PROJECTING_SAMPLERS = ('pc', 'ddim', 'ddim_diffusers')


@functools.partial(jax.jit, static_argnums=(0, 1))
def _apply(module, method: str, params, *inputs):
  """module.apply with `params` (jitted once per module configuration and method), outputs as
  float32."""
  out = module.apply({'params': params}, *inputs, method=method)
  return jax.tree.map(lambda a: a.astype(jnp.float32), out)
_FACTORIES = {'pc': sampling.get_pc_sampler, 'ode': sampling.get_ode_sampler,
              'ddim': sampling.get_ddim_sampler, 'dpm_solver': sampling.get_dpm_solver_sampler,
              'edm': sampling.get_edm_sampler,
              'ddim_diffusers': sampling.get_ddim_diffusers_sampler}


def _check_options(factory, kwargs: dict, method: str) -> None:
  """ValueError naming every keyword `factory` does not take."""
  allowed = [n for n, p in inspect.signature(factory).parameters.items()
             if p.kind == p.KEYWORD_ONLY or (p.default is not p.empty and n != 't_start')]
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    raise ValueError(f'sampler {method!r} takes no options {unknown}; it takes {sorted(allowed)}.')


def _batch_of(context, x):
  """context (B, S, D) or (1, S, D) for a batch x of B samples."""
  if context.shape[0] not in (1, x.shape[0]):
    raise ValueError(f'{context.shape[0]} contexts for a batch of {x.shape[0]} samples.')
  return jnp.broadcast_to(context, (x.shape[0], *context.shape[1:]))


def _counting(score_fn, on_evaluation):
  """score_fn that calls on_evaluation() on the host at every evaluation (progress bars)."""

  def counted(x, t):
    jax.debug.callback(on_evaluation)
    return score_fn(x, t)

  return counted


# ---------------------------------------------------------------------------------------------
# Loading.


def _tokenizer(tokenizer: Optional[str], folder: Optional[str], pad_token: Optional[str],
               path: str) -> clip_tokenizer.CLIPTokenizer:
  if tokenizer is None and folder is not None:
    tokenizer = os.path.join(folder, 'tokenizer')
  if tokenizer is None:
    raise ValueError(f'{path} is a single-file checkpoint, which holds no tokenizer: pass '
                     'tokenizer= (config field latent.tokenizer), a folder with vocab.json and '
                     'merges.txt (a diffusers checkpoint\'s tokenizer/, or that of '
                     "openai/clip-vit-large-patch14) or OpenAI's bpe_simple_vocab_16e6.txt.gz, or "
                     'architecture= a diffusers folder that has one.')
  return clip_tokenizer.CLIPTokenizer.from_files(tokenizer, pad_token=pad_token)


def default_dtype() -> str:
  """'bfloat16' on accelerators (GPU, TPU), 'float32' on CPU."""
  return 'float32' if jax.default_backend() == 'cpu' else 'bfloat16'


def load_pipeline(path: str, *, architecture: Optional[str] = None,
                  tokenizer: Optional[str] = None, prediction_type: Optional[str] = None,
                  dtype: Optional[str] = None) -> StableDiffusion:
  """The Stable Diffusion checkpoint at `path`: a diffusers folder (with model_index.json), or
  a single .safetensors / .ckpt file in the original layout (see score_sde.sd_checkpoints).

  architecture (single files only): a preset of sd_checkpoints.PRESETS ('sd1', 'sd2' (768 px,
  v-prediction), 'sd2-base' (512 px, epsilon)) or a diffusers folder whose configs describe the
  file (its weights are not read); None: the preset of the file's family ('sd1' or 'sd2').
  tokenizer: a tokenizer folder or OpenAI's merges file (default: the folder's tokenizer/).
  prediction_type: 'epsilon' | 'v_prediction' (None: the scheduler config's or the preset's).
  dtype: the computation and parameter dtype, 'float32' | 'bfloat16' | 'float16' (None:
  `default_dtype()`).
  """
  dtype = default_dtype() if dtype is None else dtype
  if dtype not in DTYPES:
    raise ValueError(f'dtype = {dtype!r} is not supported; allowed: {sorted(DTYPES)}.')
  if os.path.isdir(path):
    if architecture is not None:
      raise ValueError(f'{path} is a diffusers folder, whose configs give the architecture; '
                       f'architecture = {architecture!r} is for single-file checkpoints.')
    arch, folder = checkpoints.folder_architecture(path), path
    tensors = {'unet': checkpoints.component_weights(path, 'unet'),
               'vae': checkpoints.component_weights(path, 'vae'),
               'text': checkpoints.text_encoder_tensors(
                   checkpoints.component_weights(path, 'text_encoder'))}
    origins = {}
  else:
    stored = checkpoints.read_weight_file(path)
    family = sd_single_file.family_of(stored)
    arch, folder = _single_file_architecture(architecture, family, path)
    tensors, origins = sd_single_file.split_single_file(stored, arch, path)
  if prediction_type is not None:
    arch = dataclasses.replace(arch, prediction_type=prediction_type)
  params = Params(**checkpoints.network_params(arch, tensors, origins, DTYPES[dtype], path))
  return StableDiffusion(arch, params, _tokenizer(tokenizer, folder, arch.pad_token, path),
                         DTYPES[dtype])


def _single_file_architecture(architecture: Optional[str], family: str, path: str) -> tuple:
  """(Architecture, its diffusers folder or None) for a single file of `family`."""
  if architecture is None:
    return checkpoints.PRESETS[family], None
  if architecture in checkpoints.PRESETS:
    preset_family = 'sd1' if architecture == 'sd1' else 'sd2'
    if preset_family != family:
      raise ValueError(f'{path} holds an {family} text encoder; architecture = '
                       f'{architecture!r} is an {preset_family} preset.')
    return checkpoints.PRESETS[architecture], None
  if os.path.isdir(architecture):
    return checkpoints.folder_architecture(architecture), architecture
  raise ValueError(f'architecture = {architecture!r} is neither a preset '
                   f'({sorted(checkpoints.PRESETS)}) nor a diffusers folder.')
