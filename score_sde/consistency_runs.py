"""Consistency distillation and training runs: training.method 'cd' (from a teacher),
'ct' and 'ict' (from data alone; Song et al. 2023, Alg. 2 and 3; Song & Dhariwal 2023).

The student is a model of the zoo with model.preconditioning = 'consistency'
(consistency.ConsistencyParameterization), so the samplers read its consistency function off its
score (sampling.method = 'consistency'). Each step draws a pair of adjacent levels sigma_n <
sigma_{n+1} among N of Karras et al.'s, noise z, and minimises (distillation.consistency_loss)

  lambda(sigma_n) d(f_theta(x0 + sigma_{n+1} z, sigma_{n+1}), f_target(x_n, sigma_n)),

with x_n one teacher ODE step below (CD) or x0 + sigma_n z (CT). The recipe comes from the
config's `consistency` section, each field defaulting to its method's paper value:

  field            cd (CM, CIFAR-10)   ct (CM App. C)            ict (iCT)
  num_levels       18                  -                         -
  curriculum_*     -                   s0 = 2, s1 = 150          s0 = 10, s1 = 1280
  level_sampling   'uniform'           'uniform'                 'lognormal' (Eq. 9)
  distance         'l2'                'l2'                      'pseudo_huber' (Eq. 7)
  weighting        'uniform'           'uniform'                 'ict' (1 / (s_{n+1} - s_n))
  target_ema_rate  0.95                None (exp(s0 log 0.9 / N)) 0 (no EMA target)
  teacher_solver   'heun'              -                         -

CT's and iCT's N(k) grow with the step k over training.n_iters steps (consistency.ct_num_levels,
ict_num_levels). The target network (the state's params_target) follows the student at
target_ema_rate after each update; the state's params_ema (model.ema_rate) is what is sampled.
"""
import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

from score_sde import config_checks, consistency, datasets, distillation, losses, lpips
from score_sde import models as models_lib

METHODS = ('cd', 'ct', 'ict')
LEVEL_SAMPLINGS = ('uniform', 'lognormal')
DISTANCES = ('l2', 'pseudo_huber', 'lpips')
WEIGHTINGS = ('uniform', 'ict')
LPIPS_SIZE = 224  # CM resizes images to VGG's input size before LPIPS (bilinear)

# Each method's paper values of the `consistency` fields; a field a method lacks is refused.
DEFAULTS = {
    'cd': dict(num_levels=18, level_sampling='uniform', distance='l2', weighting='uniform',
               target_ema_rate=0.95, teacher_solver='heun'),
    'ct': dict(curriculum_start=2, curriculum_end=150, level_sampling='uniform', distance='l2',
               weighting='uniform', target_ema_rate=None),
    'ict': dict(curriculum_start=10, curriculum_end=1280, level_sampling='lognormal',
                distance='pseudo_huber', weighting='ict', target_ema_rate=0.0),
}
COMMON_FIELDS = ('sigma_min', 'sigma_max', 'rho', 'p_mean', 'p_std', 'lpips_weights')
CT_MU0 = 0.9  # CT's target EMA rate at s0 levels


class ConsistencyState(losses.TrainState):
  """A TrainState with the target network's parameters (params_target)."""

  params_target: dict


def consistency_state(state: losses.TrainState) -> ConsistencyState:
  """`state` with a target network that starts as a copy of its parameters."""
  return ConsistencyState(params_target=jax.tree.map(jnp.copy, state.params),
                          **{field.name: getattr(state, field.name)
                             for field in dataclasses.fields(losses.TrainState)})


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How a consistency run draws and compares its pairs (see the module docstring).

  method: 'cd' | 'ct' | 'ict'; parameterization: the student's; sigma_max, rho: the levels'
  range and exponent; num_levels: CD's N, or the curricula's largest (s1 + 1); curriculum_start:
  s0 (CT, iCT); total_steps: K of the curricula; level_sampling, distance, weighting: one of
  LEVEL_SAMPLINGS, DISTANCES, WEIGHTINGS; target_ema_rate: mu (None: CT's schedule);
  teacher_solver: one of distillation.TEACHER_SOLVERS; p_mean, p_std: the lognormal's.
  """

  method: str
  parameterization: consistency.ConsistencyParameterization
  sigma_max: float
  rho: float
  num_levels: int
  curriculum_start: int
  total_steps: int
  level_sampling: str
  distance: str
  weighting: str
  target_ema_rate: Optional[float]
  teacher_solver: str
  p_mean: float
  p_std: float

  @property
  def sigma_min(self) -> float:
    return self.parameterization.sigma_min

  def levels(self, step):
    """N at training step `step` (int32 scalar; traced)."""
    if self.method == 'cd':
      return jnp.asarray(self.num_levels, jnp.int32)
    grow = consistency.ct_num_levels if self.method == 'ct' else consistency.ict_num_levels
    return grow(step, self.total_steps, self.curriculum_start, self.num_levels - 1)

  def level(self, index, num_levels):
    return consistency.karras_sigma(index, num_levels, self.sigma_min, self.sigma_max, self.rho)

  def draw_pair(self, key, step, batch: int):
    """(sigma_n, sigma_{n+1}) (batch,) of pairs drawn among the levels of `step`."""
    num_levels = self.levels(step)
    if self.level_sampling == 'uniform':
      index = jax.random.randint(key, (batch,), 0, num_levels - 1)
    else:
      logits = consistency.lognormal_pair_logits(num_levels, self.num_levels, self.sigma_min,
                                                 self.sigma_max, self.rho, self.p_mean,
                                                 self.p_std)
      index = jax.random.categorical(key, logits, shape=(batch,))
    return self.level(index, num_levels), self.level(index + 1, num_levels)

  def weight(self, sigma, sigma_next):
    if self.weighting == 'ict':
      return consistency.ict_weight(sigma, sigma_next)
    return jnp.ones_like(sigma)

  def target_rate(self, step):
    if self.target_ema_rate is None:
      return consistency.ct_target_ema_rate(self.levels(step), self.curriculum_start, CT_MU0)
    return jnp.asarray(self.target_ema_rate, jnp.float32)


def _given(config, name: str):
  """consistency.<name>, or None when the section or the field is absent."""
  section = config.get('consistency')
  return None if section is None else section.get(name)


def _field(config, name: str, method: str):
  """consistency.<name>, or the method's default when it is not given."""
  value = _given(config, name)
  return DEFAULTS[method].get(name) if value is None else value


def check_fields(config, method: str) -> None:
  """ValueError naming a `consistency` field that `method` has no use for."""
  section = config.get('consistency')
  if section is None:
    return
  for name, value in section.items():
    if value is not None and name not in DEFAULTS[method] and name not in COMMON_FIELDS:
      users = [m for m in METHODS if name in DEFAULTS[m]]
      raise ValueError(f'Config field consistency.{name} = {value!r} does not apply to '
                       f'training.method = {method!r} (it is for {users}); set it to None.')


def recipe_from_config(config, method: str, start_level: float) -> Recipe:
  """The Recipe of `method` from config (consistency section, model.sigma_data, training.n_iters);
  `start_level`: the student SDE's EDM level at T, the default sigma_max. ValueError naming the
  field for any value out of range."""
  check_fields(config, method)
  choose = lambda name, allowed: _checked_choice(config, name, method, allowed)  # noqa: E731
  number = lambda name, default: _checked_positive(config, name, default)  # noqa: E731
  parameterization = consistency.preconditioning_from_config(config)
  if not isinstance(parameterization, consistency.ConsistencyParameterization):
    raise ValueError(f"training.method = {method!r} trains a consistency model: set "
                     "model.preconditioning = 'consistency', not "
                     f'{config.model.get("preconditioning")!r}.')
  sigma_max = number('sigma_max', start_level)
  if not parameterization.sigma_min < sigma_max <= start_level * (1 + 1e-5):
    raise ValueError(f'Config field consistency.sigma_max = {sigma_max} must lie in (sigma_min '
                     f'= {parameterization.sigma_min}, the SDE\'s level at T = {start_level:.6g}].')
  if method == 'cd':
    num_levels, start = _checked_count(config, 'num_levels', method, 2), 0
  else:
    start = _checked_count(config, 'curriculum_start', method, 2)
    end = _checked_count(config, 'curriculum_end', method, start)
    num_levels = end + 1
  rate = DEFAULTS[method]['target_ema_rate']
  if _given(config, 'target_ema_rate') is not None:
    rate = config_checks.unit_interval(config, 'consistency.target_ema_rate')
  solver = choose('teacher_solver', distillation.TEACHER_SOLVERS) if method == 'cd' else ''
  return Recipe(method=method, parameterization=parameterization, sigma_max=sigma_max,
                rho=number('rho', 7.0), num_levels=num_levels, curriculum_start=start,
                total_steps=config_checks.positive_int(config, 'training.n_iters'),
                level_sampling=choose('level_sampling', LEVEL_SAMPLINGS),
                distance=choose('distance', DISTANCES), weighting=choose('weighting', WEIGHTINGS),
                target_ema_rate=rate, teacher_solver=solver,
                p_mean=_checked_real(config, 'p_mean', -1.1), p_std=number('p_std', 2.0))


def _checked_choice(config, name: str, method: str, allowed) -> str:
  value = _field(config, name, method)
  if value not in allowed:
    raise ValueError(f'Config field consistency.{name} = {value!r} is not allowed; allowed: '
                     f'{list(allowed)}.')
  return value


def _checked_positive(config, name: str, default: float) -> float:
  value = _given(config, name)
  if value is None:
    return float(default)
  return config_checks.positive_float(config, f'consistency.{name}')


def _checked_real(config, name: str, default: float) -> float:
  value = _given(config, name)
  if value is None:
    return float(default)
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(f'Config field consistency.{name} = {value!r} must be a number.')
  return float(value)


def _checked_count(config, name: str, method: str, least: int) -> int:
  value = _field(config, name, method)
  if isinstance(value, bool) or not isinstance(value, int) or value < least:
    raise ValueError(f'Config field consistency.{name} = {value!r} must be an integer >= '
                     f'{least}.')
  return value


def get_distance(config, recipe: Recipe) -> Callable:
  """distance(a, b) -> (B,) in the model's data range: 'l2' (distillation.squared_l2),
  'pseudo_huber' (c = 0.00054 sqrt(d)) or 'lpips' (images mapped to [-1, 1] and resized to
  224 x 224 as CM does; weights from consistency.lpips_weights, else $SCORE_SDE_LPIPS_WEIGHTS)."""
  if recipe.distance == 'l2':
    return distillation.squared_l2
  if recipe.distance == 'pseudo_huber':
    return consistency.pseudo_huber
  params = lpips.load_lpips(_given(config, 'lpips_weights'))
  inverse_scaler = datasets.get_data_inverse_scaler(config)

  def perceptual(a, b):
    def prepare(x):
      x = 2.0 * inverse_scaler(x) - 1.0
      return jax.image.resize(x, (x.shape[0], LPIPS_SIZE, LPIPS_SIZE, x.shape[-1]), 'bilinear')
    return lpips.apply(params, prepare(a), prepare(b))

  return perceptual


def student_fn(model, parameterization, params, train: bool, **kwargs) -> Callable:
  """f(x, sigma) of the student with `params`; kwargs (rng, class_labels) go to the network."""
  f = parameterization.consistency_fn(models_lib.get_model_fn(model, {'params': params}, train))
  return lambda x, sigma: f(x, sigma, **kwargs)


def _pair(recipe: Recipe, teacher: Optional[Callable], x0, noise, sigma, sigma_next,
          kwargs: dict) -> tuple:
  """(x_{n+1}, x_n): CD's (one teacher step below, `kwargs` to the teacher) or CT's."""
  if teacher is None:
    return distillation.training_pair(x0, noise, sigma, sigma_next)
  return distillation.distillation_pair(teacher, x0, noise, sigma, sigma_next,
                                        recipe.teacher_solver, **kwargs)


def get_train_step(recipe: Recipe, model, optimizer: optax.GradientTransformation,
                   ema_rate: float, distance: Callable, teacher: Optional[Callable] = None,
                   label_dropout: float = 0.0, null_condition=None) -> Callable:
  """train_steps(state, x0s, class_labels=None) -> (state, metrics) running len(x0s) updates
  (x0s (n, B, ...) in the model's range; class_labels (n, B, ...) of a conditional student, each
  replaced by null_condition at the label_dropout rate, for student and teacher alike);
  metrics {'loss' (n,), 'num_levels' (n,)}. `teacher`: the denoiser D(x, sigma,
  class_labels=...) of CD (None: CT)."""
  parameterization = recipe.parameterization

  def one_step(state: ConsistencyState, batch):
    x0, class_labels = batch
    key = jax.random.fold_in(state.rng, state.step)
    level_key, noise_key, dropout_key, label_key = jax.random.split(key, 4)
    kwargs = {}
    if class_labels is not None:
      if label_dropout > 0:
        class_labels = losses.drop_labels(label_key, class_labels, label_dropout, null_condition)
      kwargs['class_labels'] = class_labels
    sigma, sigma_next = recipe.draw_pair(level_key, state.step, x0.shape[0])
    pair = _pair(recipe, teacher, x0, jax.random.normal(noise_key, x0.shape), sigma,
                 sigma_next, kwargs)
    target = student_fn(model, parameterization, state.params_target, True, rng=dropout_key,
                        **kwargs)

    def loss_fn(params):
      student = student_fn(model, parameterization, params, True, rng=dropout_key, **kwargs)
      return jnp.mean(distillation.consistency_loss(student, target, pair, sigma, sigma_next,
                                                    distance, recipe.weight(sigma, sigma_next)))

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state,
        params_ema=losses.ema_update(state.params_ema, params, ema_rate),
        params_target=losses.ema_update(state.params_target, params,
                                        recipe.target_rate(state.step)))
    return new_state, {'loss': loss, 'num_levels': recipe.levels(state.step)}

  def train_steps(state, x0s, class_labels=None):
    if x0s.shape[0] == 1:
      first_labels = None if class_labels is None else class_labels[0]
      state, metrics = one_step(state, (x0s[0], first_labels))
      return state, jax.tree.map(lambda m: m[None], metrics)
    return jax.lax.scan(one_step, state, (x0s, class_labels))

  return train_steps


def get_eval_losses(recipe: Recipe, model, distance: Callable,
                    teacher: Optional[Callable] = None) -> Callable:
  """eval_losses(state, key, x0, class_labels=None) -> (B,): the consistency losses of the EMA
  student against itself as target, on pairs of the last step's levels, without dropout."""

  def eval_losses(state, key, x0, class_labels=None):
    level_key, noise_key = jax.random.split(key)
    kwargs = {} if class_labels is None else {'class_labels': class_labels}
    sigma, sigma_next = recipe.draw_pair(level_key, recipe.total_steps, x0.shape[0])
    pair = _pair(recipe, teacher, x0, jax.random.normal(noise_key, x0.shape), sigma,
                 sigma_next, kwargs)
    f = student_fn(model, recipe.parameterization, state.params_ema, False, **kwargs)
    return distillation.consistency_loss(f, f, pair, sigma, sigma_next, distance,
                                         recipe.weight(sigma, sigma_next))

  return eval_losses


def check_teacher_levels(recipe: Recipe, lowest: float, highest: float) -> None:
  """ValueError unless the teacher's SDE covers the recipe's levels [sigma_min, sigma_max]
  (`lowest`, `highest`: its EDM levels at t = 0 and T)."""
  if recipe.sigma_min < lowest * (1 - 1e-5) or recipe.sigma_max > highest * (1 + 1e-5):
    raise ValueError(f'The teacher covers the noise levels [{lowest:.6g}, {highest:.6g}] but the '
                     f'student is distilled on [{recipe.sigma_min:.6g}, {recipe.sigma_max:.6g}]: '
                     'set consistency.sigma_min / sigma_max (or the student\'s SDE) inside the '
                     "teacher's range.")


def levels_of_sde(sde) -> tuple:
  """The EDM levels (sigma / alpha at t = 0, at T) of an SDE's kernel, floats."""
  levels = distillation.level_of_time(sde, jnp.asarray([0.0, sde.T], jnp.float32))
  return float(levels[0]), float(levels[1])

