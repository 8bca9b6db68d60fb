"""Few-step students of a closed-form oracle (gaussian_mixture.GaussianMixture), for the
few-step benchmark, the notebook and the tests, trained without a workdir: consistency students
(CD with the mixture's exact score as the teacher, CT / iCT on its exact samples, by
consistency_runs' steps on configs/fewstep/toy_cd.py, toy_ict.py) and flows trained on a
coupling (reflow and its one-step distillation, score_sde.reflow, on
configs/toy/rectified_flow.py).

    student = oracle_students.train(config, mixture, key=key)   # config.training.method
    samples, nfe = student.sample(key, (10_000, 2), levels=(0.8,))
    z, x0 = reflow.reflow_pairs(key, mixture.velocity_score_fn(flow_sde), flow_sde, (n, 2))
    reflowed = oracle_students.train_on_pairs(flow_config, z, x0, key=key)
"""
import dataclasses

import jax
import jax.numpy as jnp

import optax

from score_sde import config_checks, consistency_runs, distillation, losses, methods, reflow
from score_sde import models as models_lib
from score_sde.sampling import consistency as consistency_sampling


@dataclasses.dataclass(frozen=True)
class Student:
  """A trained consistency student: its experiment (SDE, model), EMA parameters and recipe."""

  experiment: methods.Experiment
  params: dict
  recipe: consistency_runs.Recipe

  def score_fn(self):
    """score_fn(x, t) of the EMA student (its consistency function read as a denoiser)."""
    score = models_lib.get_score_fn(self.experiment.sde, self.experiment.model,
                                    {'params': self.params}, continuous=True)
    return lambda x, t: score(x, t)

  def sample(self, key, shape, levels=()):
    """(samples of `shape`, nfe) of the consistency sampler with the EDM `levels` after the
    first step (none: one step)."""
    sample = consistency_sampling.get_consistency_sampler(self.experiment.sde, levels,
                                                          sigma_min=self.recipe.sigma_min)
    return jax.jit(lambda k: sample(k, self.score_fn(), shape))(key)


def train(config, mixture, *, key, chunk: int = 100) -> Student:
  """A student of `mixture` trained for training.n_iters steps of training.batch_size by
  config.training.method: 'cd' distils the mixture's exact probability-flow ODE (on the
  config's SDE), 'ct' / 'ict' train on its exact samples. Batches come from fold_in(key, step);
  `chunk` steps run per compiled call."""
  method = methods.method_name(config)
  if method not in consistency_runs.METHODS:
    raise ValueError(f'training.method = {method!r} is not a consistency method; allowed: '
                     f'{list(consistency_runs.METHODS)}.')
  experiment = methods.build_experiment(config, (mixture.dim,))
  recipe = consistency_runs.recipe_from_config(
      config, method, consistency_runs.levels_of_sde(experiment.sde)[1])
  teacher = None
  if method == 'cd':
    consistency_runs.check_teacher_levels(recipe,
                                          *consistency_runs.levels_of_sde(experiment.sde))
    teacher = distillation.score_denoiser(mixture.score_fn(experiment.sde), experiment.sde)
  steps = consistency_runs.get_train_step(
      recipe, experiment.model, experiment.optimizer,
      config_checks.unit_interval(config, 'model.ema_rate'),
      consistency_runs.get_distance(config, recipe), teacher)
  batch = config_checks.positive_int(config, 'training.batch_size')
  total = config_checks.positive_int(config, 'training.n_iters')
  if total % chunk:
    raise ValueError(f'training.n_iters = {total} must be a multiple of chunk = {chunk}.')

  @jax.jit
  def run_chunk(state, first):
    keys = jax.vmap(lambda k: jax.random.fold_in(key, k))(first + jnp.arange(chunk))
    data = jax.vmap(lambda k: mixture.sample(k, batch)[0])(keys)
    return steps(state, data)[0]

  state = consistency_runs.consistency_state(experiment.initial_state)
  for first in range(0, total, chunk):
    state = run_chunk(state, first)
  return Student(experiment, state.params_ema, recipe)


@dataclasses.dataclass(frozen=True)
class Flow:
  """A velocity model trained on a coupling: its experiment and EMA parameters."""

  experiment: methods.Experiment
  params: dict

  def score_fn(self):
    """The VelocityScore (flows.py) of the EMA model: score_fn(x, t) with `.velocity`."""
    return models_lib.get_score_fn(self.experiment.sde, self.experiment.model,
                                   {'params': self.params}, continuous=True)


def train_on_pairs(config, z, x0, *, key, distill: bool = False, chunk: int = 100) -> Flow:
  """A velocity model of config (a velocity config, e.g. configs/toy/rectified_flow.py) trained
  for training.n_iters steps of training.batch_size pairs drawn from the coupling z, x0 (N, ...)
  (batch k's from fold_in(key, k)): by the reflow loss (reflow.reflow_loss, the next rectified
  flow), or, with `distill`, by one-step distillation (reflow.distillation_loss)."""
  experiment = methods.build_experiment(config, z.shape[1:])
  sde, model, optimizer = experiment.sde, experiment.model, experiment.optimizer
  batch = config_checks.positive_int(config, 'training.batch_size')
  total = config_checks.positive_int(config, 'training.n_iters')
  ema_rate = config_checks.unit_interval(config, 'model.ema_rate')
  if total % chunk:
    raise ValueError(f'training.n_iters = {total} must be a multiple of chunk = {chunk}.')
  z, x0 = jnp.asarray(z), jnp.asarray(x0)

  def loss_fn(params, step_key):
    velocity = models_lib.get_score_fn(sde, model, {'params': params}, continuous=True).velocity
    index_key, loss_key = jax.random.split(step_key)
    index = jax.random.randint(index_key, (batch,), 0, z.shape[0])
    if distill:
      return jnp.mean(reflow.distillation_loss(z[index], x0[index], velocity, sde))
    return jnp.mean(reflow.reflow_loss(loss_key, z[index], x0[index], velocity, sde))

  def one_step(state, step):
    grads = jax.grad(loss_fn)(state.params, jax.random.fold_in(key, step))
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         params_ema=losses.ema_update(state.params_ema, params, ema_rate)), None

  run_chunk = jax.jit(lambda state, first: jax.lax.scan(one_step, state,
                                                        first + jnp.arange(chunk))[0])
  state = experiment.initial_state
  for first in range(0, total, chunk):
    state = run_chunk(state, first)
  return Flow(experiment, state.params_ema)
