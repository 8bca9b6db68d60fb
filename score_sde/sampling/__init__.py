"""Samplers: `get_sampler(config, sde)` and the predictor / corrector registries.

Every sampler is a function sample(key, score_fn, shape, first_index=0, x_start=None, ...) ->
(samples, nfe): 'pc' (predictor-corrector, pc.py; nfe an int), 'ode' (probability-flow ODE,
ode.py; nfe per sample, shape (B,)), 'ddim' (ddim.py), 'dpm_solver' (DPM-Solver++,
dpm_solver.py), 'edm' (EDM's Heun sampler, edm.py), 'ddim_diffusers' (diffusers'
DDIMScheduler on a discrete VP model, ddim_diffusers.py) and 'consistency' (one- and multistep
sampling of a consistency model, consistency.py); the last five return an int nfe.
Sample k draws its prior sample (and any noise) from fold_in(key, k), so every sampler starts
from the same prior draws. Every factory takes t_start (None: T) and every sample x_start (None:
the prior draws), to start a run from a given state at a given time (sampling.start: SDEdit,
img2img). 'pc', 'ddim' and 'ddim_diffusers' also take project= (score_sde.controllable).
"""
import jax
import jax.numpy as jnp

from score_sde import config_checks, flows
from score_sde import models as models_lib
from score_sde import sde as sde_lib
from score_sde.sampling import (consistency, correctors, ddim, ddim_diffusers, dpm_solver, edm,
                                grid, guidance, ode)
from score_sde.sampling.ode import ODESolver, get_flow_maps, get_ode_sampler
from score_sde.sampling.consistency import get_consistency_sampler
from score_sde.sampling.correctors import (Corrector, get_corrector, register_corrector,
                                           registered_correctors)
from score_sde.sampling.ddim import get_ddim_sampler
from score_sde.sampling.ddim_diffusers import get_ddim_diffusers_sampler
from score_sde.sampling.dpm_solver import get_dpm_solver_sampler
from score_sde.sampling.edm import get_edm_sampler
from score_sde.sampling.pc import get_pc_sampler
from score_sde.sampling.predictors import (Predictor, get_predictor, register_predictor,
                                           registered_predictors)

__all__ = ['Corrector', 'DEFAULT_SCHEDULES', 'ODESolver', 'Predictor', 'SAMPLING_METHODS',
           'get_consistency_sampler', 'get_corrector', 'get_ddim_diffusers_sampler',
           'get_ddim_sampler', 'get_dpm_solver_sampler', 'get_edm_sampler',
           'get_flow_maps', 'get_model_sampler', 'get_ode_sampler', 'get_pc_sampler',
           'get_predictor', 'get_sampler', 'register_corrector', 'register_predictor',
           'registered_correctors', 'registered_predictors']

SAMPLING_METHODS = ('pc', 'ode', 'ddim', 'dpm_solver', 'edm', 'ddim_diffusers', 'consistency')
# The time schedule each fast sampler uses when config.sampling.time_schedule is None.
DEFAULT_SCHEDULES = {'ddim': 'time_uniform', 'dpm_solver': 'logsnr', 'edm': 'rho'}


def get_sampler(config, sde, continuous: bool = True, t_start=None):
  """The sampler selected by config.sampling.

  method 'pc': predictor, corrector, snr, n_steps_each, step_size_rule, probability_flow,
  noise_removal, eps. method 'ode': ode_solver, rtol, atol, ode_steps (for 'euler' / 'heun'),
  noise_removal, eps. methods 'ddim', 'dpm_solver', 'edm': steps or nfe, time_schedule (None:
  DEFAULT_SCHEDULES), rho, noise_removal (the final denoising step), eps; 'ddim' also eta,
  'dpm_solver' dpm_solver_variant, 'edm' s_churn, s_min, s_max (None: no limit), s_noise.
  method 'ddim_diffusers' (a discrete VP model only): steps, eta, timestep_spacing,
  steps_offset, set_alpha_to_one. method 'consistency' (a consistency model of continuous noise
  levels): consistency_levels (the EDM noise levels of the steps after the first; () for one
  step), consistency_sigma_min. `continuous=False` declares a score conditioned on discrete
  steps (the ODE's adaptive solvers then step to each of its jumps; the fast samplers run on its
  steps). t_start (None: T): the time the runs start from, with `sample(..., x_start=...)`.
  """
  method = config_checks.choice(config, 'sampling.method', SAMPLING_METHODS)
  if isinstance(sde, sde_lib.RectifiedFlow) and method != 'ode':
    raise ValueError(f"Config field sampling.method = {method!r} does not sample training.sde = "
                     "'rectified_flow', whose alpha(T) = 0 and infinite f, g^2 at T break the data "
                     'estimate x0_hat = (x + sigma^2 s) / alpha of the grid samplers and the '
                     "reverse SDE of 'pc'; use sampling.method = 'ode' (the flow's velocity).")
  if method == 'ddim_diffusers':
    return _ddim_diffusers_sampler(config, sde, continuous, t_start)
  if method == 'consistency':
    return _consistency_sampler(config, sde, continuous, t_start)
  if method in DEFAULT_SCHEDULES:
    return _fast_sampler(config, sde, method, continuous, t_start)
  if method == 'ode':
    solver = ODESolver(solver=config_checks.choice(config, 'sampling.ode_solver', ode.SOLVERS),
                       rtol=config_checks.positive_float(config, 'sampling.rtol'),
                       atol=config_checks.positive_float(config, 'sampling.atol'),
                       num_steps=config_checks.positive_int(config, 'sampling.ode_steps'))
    return get_ode_sampler(sde, solver,
                           noise_removal=bool(config_checks.get(config, 'sampling.noise_removal')),
                           eps=config_checks.positive_float(config, 'sampling.eps'),
                           continuous=continuous, t_start=t_start)
  return get_pc_sampler(
      sde,
      predictor=config_checks.choice(config, 'sampling.predictor', registered_predictors()),
      corrector=config_checks.choice(config, 'sampling.corrector', registered_correctors()),
      snr=config_checks.positive_float(config, 'sampling.snr'),
      n_steps_each=config_checks.positive_int(config, 'sampling.n_steps_each'),
      probability_flow=bool(config_checks.get(config, 'sampling.probability_flow')),
      noise_removal=bool(config_checks.get(config, 'sampling.noise_removal')),
      eps=config_checks.positive_float(config, 'sampling.eps'),
      step_size_rule=config_checks.choice(config, 'sampling.step_size_rule',
                                          correctors.STEP_SIZE_RULES),
      t_start=t_start)


def _optional(config, field, check):
  """`check(config, field)` for a set field; None when it is None."""
  return None if config_checks.get(config, field) is None else check(config, field)


def _steps_or_nfe(config, method: str):
  """config.sampling.steps and .nfe, exactly one of them set."""
  steps = _optional(config, 'sampling.steps', config_checks.positive_int)
  nfe = _optional(config, 'sampling.nfe', config_checks.positive_int)
  if (steps is None) == (nfe is None):
    raise ValueError(f'Set exactly one of config fields sampling.steps ({steps!r}) and '
                     f'sampling.nfe ({nfe!r}) for sampling.method = {method!r}.')
  return steps, nfe


def _eta(config) -> float:
  eta = config_checks.non_negative(config, 'sampling.eta')
  if eta > 1:
    raise ValueError(f'Config field sampling.eta = {eta} must lie in [0, 1].')
  return eta


def _ddim_diffusers_sampler(config, sde, continuous: bool, t_start):
  """diffusers' DDIMScheduler of config.sampling on a discrete VP model."""
  if continuous:
    raise ValueError("sampling.method = 'ddim_diffusers' runs a discretely trained VP model on its "
                     'steps: build it with continuous=False (training.continuous = False).')
  if config_checks.get(config, 'sampling.nfe') is not None:
    raise ValueError(f"Config field sampling.nfe = {config.sampling.nfe!r}: sampling.method "
                     "'ddim_diffusers' takes sampling.steps (diffusers' num_inference_steps); set "
                     'sampling.nfe to None.')
  steps = config_checks.positive_int(config, 'sampling.steps')
  steps_offset = config_checks.get(config, 'sampling.steps_offset')
  if isinstance(steps_offset, bool) or not isinstance(steps_offset, int) or steps_offset < 0:
    raise ValueError(f'Config field sampling.steps_offset = {steps_offset!r} must be an integer '
                     '>= 0.')
  return ddim_diffusers.get_ddim_diffusers_sampler(
      sde, num_steps=steps, eta=_eta(config),
      timestep_spacing=config_checks.choice(config, 'sampling.timestep_spacing',
                                            ddim_diffusers.TIMESTEP_SPACINGS),
      steps_offset=steps_offset,
      set_alpha_to_one=config_checks.boolean(config, 'sampling.set_alpha_to_one'),
      t_start=t_start)


def _consistency_sampler(config, sde, continuous: bool, t_start):
  """The consistency sampler of config.sampling (a model of continuous noise levels)."""
  if not continuous:
    raise ValueError("sampling.method = 'consistency' samples a model of continuous noise levels; "
                     'training.continuous = False declares a discrete one.')
  levels = config_checks.get(config, 'sampling.consistency_levels')
  if not isinstance(levels, (tuple, list)) or not all(
      isinstance(level, (int, float)) and not isinstance(level, bool) for level in levels):
    raise ValueError(f'Config field sampling.consistency_levels = {levels!r} must be a tuple of '
                     'noise levels (() for one step).')
  return consistency.get_consistency_sampler(
      sde, tuple(float(level) for level in levels),
      sigma_min=config_checks.positive_float(config, 'sampling.consistency_sigma_min'),
      t_start=t_start)


def _fast_sampler(config, sde, method: str, continuous: bool, t_start):
  """The DDIM / DPM-Solver++ / EDM sampler of config.sampling."""
  steps, nfe = _steps_or_nfe(config, method)
  schedule = config_checks.get(config, 'sampling.time_schedule') or DEFAULT_SCHEDULES[method]
  if schedule not in grid.SCHEDULES:
    raise ValueError(f'Config field sampling.time_schedule = {schedule!r} is not supported; '
                     f'allowed: {list(grid.SCHEDULES)} or None.')
  common = dict(num_steps=steps, nfe=nfe, schedule=schedule,
                rho=config_checks.positive_float(config, 'sampling.rho'),
                eps=config_checks.positive_float(config, 'sampling.eps'),
                denoise=bool(config_checks.get(config, 'sampling.noise_removal')),
                continuous=continuous, t_start=t_start)
  if method == 'ddim':
    return ddim.get_ddim_sampler(sde, eta=_eta(config), **common)
  if method == 'dpm_solver':
    variant = config_checks.choice(config, 'sampling.dpm_solver_variant',
                                   dpm_solver.EVALS_PER_STEP)
    return dpm_solver.get_dpm_solver_sampler(sde, variant=variant, **common)
  s_max = _optional(config, 'sampling.s_max', config_checks.non_negative)
  return edm.get_edm_sampler(sde, s_churn=config_checks.non_negative(config, 'sampling.s_churn'),
                             s_min=config_checks.non_negative(config, 'sampling.s_min'),
                             s_max=float('inf') if s_max is None else s_max,
                             s_noise=config_checks.non_negative(config, 'sampling.s_noise'),
                             **common)


_HOW_TO_CONDITION = ('set model.num_classes (NCSN++, DDPM or MLP models) or model.conditioning '
                     '(ldm_unet)')


def get_model_sampler(config, sde, model, shape, sharding=None, null_condition=None):
  """Jitted draw(variables, key, first_index=0, class_labels=None, guidance_scale=None) ->
  (samples of `shape`, nfe) from a trained model, with the score convention of
  config.training.continuous. `sharding` (e.g. batch-sharded over a device mesh) lays out the
  samples, and with them the sampling work, over the devices.

  A conditional model (models.example_condition) draws sample k for condition class_labels[k]
  (class-conditional models default to class k mod num_classes, all classes in turn; caption
  models need them), guided at config.sampling.guidance_scale (classifier-free guidance against
  `null_condition`, default the model's null label or empty caption; None: the conditional score
  alone). A guidance_scale passed to draw replaces the config's and is traced: a sweep over
  scales compiles once.
  """
  continuous = bool(config_checks.get(config, 'training.continuous'))
  sampler = get_sampler(config, sde, continuous)
  example = models_lib.example_condition(config)
  num_classes = models_lib.num_data_classes(config)
  scale = config.sampling.get('guidance_scale')
  if scale is not None and example is None:
    raise ValueError(f'Config field sampling.guidance_scale = {scale} needs a conditional '
                     f'model: {_HOW_TO_CONDITION}.')
  null = example[0] if null_condition is None and example is not None else null_condition
  one_at_a_time = config.sampling.method == 'ode'  # it solves each sample alone

  @jax.jit
  def draw(variables, key, first_index=0, class_labels=None, guidance_scale=None):
    score_fn = models_lib.get_score_fn(sde, model, variables, train=False, continuous=continuous)
    if example is None:
      if guidance_scale is not None:
        raise ValueError('draw was given a guidance_scale, which needs a conditional model: '
                         f'{_HOW_TO_CONDITION}.')
      samples, nfe = sampler(key, score_fn, shape, first_index)
    else:
      w = scale if guidance_scale is None else guidance_scale
      if class_labels is None:
        if num_classes is None:
          raise ValueError('A caption-conditioned model samples for given captions: pass their '
                           'conditions as class_labels (B, ...).')
        class_labels = (first_index + jnp.arange(shape[0])) % num_classes
      class_score = flows.transformed(
          score_fn, lambda fn: lambda x, t, class_labels: fn(x, t, class_labels=class_labels))
      if one_at_a_time:
        def draw_one(index, label):
          guided = guidance.guided_score_fn(class_score, label, w, null)
          return sampler(key, guided, (1, *shape[1:]), first_index + index)
        samples, nfe = jax.vmap(draw_one)(jnp.arange(shape[0]), class_labels)
        samples, nfe = samples.reshape(shape), nfe.reshape(shape[0])
      else:
        guided = guidance.guided_score_fn(class_score, class_labels, w, null)
        samples, nfe = sampler(key, guided, shape, first_index)
    if sharding is not None:
      samples = jax.lax.with_sharding_constraint(samples, sharding)
    return samples, nfe

  return draw
