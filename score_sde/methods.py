"""Ways to train a run, chosen by config.training.method from one registry; the drivers
(train.py, evaluate.py) know runs, steps, checkpoints and reports, not methods.

  'score'        a score model of the zoo on data, or on the latents of an autoencoder
                 (latent_runs.py), with the losses of losses.py / edm.py (the default)
  'autoencoder'  the KL autoencoder of latent diffusion (autoencoder_training.py)
  'cd'           consistency distillation of the score run training.teacher (consistency_runs.py)
  'ct', 'ict'    consistency training from data alone, the original and the improved recipe

A `Method` is what the drivers need of one: the initial state, a host-side map from a
dataset batch to the arrays its steps take, the jittable steps, an evaluation loss, a snapshot
picture, the evaluation of a checkpoint and, for generative methods, the samples of --mode sample.
"""
import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from score_sde import autoencoder_eval, autoencoder_losses, autoencoder_training, checkpoints
from score_sde import config_checks, consistency_runs, datasets, distillation, latent_runs, losses
from score_sde import sampling, score_eval
from score_sde import conditions as conditions_lib
from score_sde import models as models_lib
from score_sde import sde as sde_lib
from score_sde import workdir as workdir_lib
from score_sde.registry import Registry

_METHODS = Registry('training method')
register_method = _METHODS.register
METHOD_FIELD = 'training.method'


def method_name(config) -> str:
  """config.training.method (absent or None: 'score'), checked against the registry."""
  if config.training.get('method') is None:
    return 'score'
  return config_checks.choice(config, METHOD_FIELD, _METHODS.names())


@dataclasses.dataclass(frozen=True)
class Method:
  """One way to train, built from a config.

  initial_state: the state pytree at step 0 (with fields `step` and `rng`; the RNG of step k is
    fold_in(rng, k)).
  batch_arrays(batch) -> dict of arrays: a dataset batch ({'x' in [0, 1], maybe 'label'}) on the
    host -> what the steps take (e.g. {'x': data in the model's range, 'labels': ...}); the
    driver stacks n of them on a new leading axis.
  train_steps(state, batches) -> (state, metrics): len(batches['x']) updates; metrics a dict of
    (n,) arrays holding at least 'loss'. Pure, for jit.
  eval_losses(state, key, arrays) -> per-example evaluation losses (B,) of one batch_arrays.
  snapshot(state, key, arrays) -> images or points in data units for the snapshot picture.
  data_shape: the shape of one example the model sees.
  evaluator(mesh) -> report(state, step, out): --mode eval's report dict of the checkpoint
    `state` of `step`, whose files it writes once each into the folder `out`.
  draw_samples(mesh, state, out) -> {'samples' (N, ...) uint8 images or float32 points,
    'nfe' (N,), 'seconds'}: eval.num_samples samples in data units, batches saved into `out`;
    None for methods that generate nothing.
  """

  initial_state: object
  batch_arrays: Callable
  train_steps: Callable
  eval_losses: Callable
  snapshot: Optional[Callable]
  data_shape: tuple
  evaluator: Callable
  draw_samples: Optional[Callable]


def resolve_config(config, workdir_path: str):
  """`config` with the fields a run derives from its data on its first start filled in (a latent
  run's latent.scale_factor, a caption model's model.vocabulary), from the run's recorded
  config.json when it has one; the drivers record the result."""
  return conditions_lib.resolve_vocabulary(
      latent_runs.resolve_scale_factor(config, workdir_path), workdir_path)


def get_method(config, sample_sharding=None) -> Method:
  """The Method of config.training.method, built (and validated) from `config`;
  `sample_sharding` lays out the snapshot samples (and the work) over devices."""
  return _METHODS.get(method_name(config))(config, sample_sharding)


@dataclasses.dataclass(frozen=True)
class Experiment:
  """What a score config builds: the SDE, the model and its initial training state."""

  sde: sde_lib.SDE
  model: object
  data_shape: tuple
  optimizer: object
  initial_state: losses.TrainState


def build_experiment(config, data_shape: Optional[tuple] = None) -> Experiment:
  """Validates the config's SDE, data, model and optimizer and initialises the state from
  config.seed (parameters, EMA copy, optimizer state, base RNG key); `data_shape` defaults to
  the dataset's (a latent run passes its latents')."""
  sde = sde_lib.get_sde(config)
  data_shape = datasets.data_shape(config) if data_shape is None else tuple(data_shape)
  optimizer = losses.get_optimizer(config)
  init_key, state_key = jax.random.split(jax.random.PRNGKey(config_checks.get(config, 'seed')))
  model, variables = models_lib.init_model(init_key, config, data_shape)
  return Experiment(sde, model, data_shape, optimizer,
                    losses.init_train_state(state_key, variables['params'], optimizer))


def check_conditions(config, conds: Optional[conditions_lib.Conditions]) -> None:
  """ValueError, before any work, if a conditional model's dataset lacks the entry its
  conditions are made from ('label' or 'caption') in either split."""
  if conds is None:
    return
  for split in datasets.SPLITS:
    if conds.field not in datasets.example_fields(config, split):
      raise ValueError(f'The model is conditioned on {conds.kind} (model.num_classes or '
                       f"model.conditioning), but data.dataset = {config.data.dataset!r} yields "
                       f"no '{conds.field}' ({split} split); use a dataset with {conds.field}s "
                       'or an unconditional model.')


def score_batch_arrays(config, conds: Optional[conditions_lib.Conditions]) -> Callable:
  """batch -> {'x': data in the model's range, 'labels': the conditions (B, ...) of a
  conditional model}."""
  check_conditions(config, conds)
  scaler = datasets.get_data_scaler(config)

  def batch_arrays(batch):
    arrays = {'x': scaler(np.asarray(batch['x']))}
    if conds is not None:
      arrays['labels'] = conds.of_batch(batch)
    return arrays

  return batch_arrays


def score_method_of(config, experiment: Experiment, snapshot_batch: int,
                    conds: Optional[conditions_lib.Conditions], sample_sharding=None) -> dict:
  """The fields of a score Method but batch_arrays: steps, eval losses and a snapshot sampler of
  `snapshot_batch` samples (in the model's space; a caption model's for the captions of the
  test batch it is given)."""
  sde, model = experiment.sde, experiment.model
  null = None if conds is None else conds.null
  steps = losses.get_train_step(config, sde, model, experiment.optimizer, null_condition=null)
  example_losses = losses.get_eval_step(config, sde, model)
  draw = None
  if bool(config_checks.get(config, 'training.snapshot_sampling')):
    draw = sampling.get_model_sampler(config, sde, model,
                                      (snapshot_batch, *experiment.data_shape),
                                      sharding=sample_sharding, null_condition=null)

  def train_steps(state, batches):
    state, step_losses = steps(state, batches['x'], batches.get('labels'))
    return state, {'loss': step_losses}

  def eval_losses(state, key, arrays):
    return example_losses(state, key, arrays['x'], arrays.get('labels'))

  def snapshot(state, key, arrays):
    captioned = conds is not None and conds.kind != 'class'
    return draw({'params': state.params_ema}, key,
                class_labels=arrays['labels'] if captioned else None)[0]

  return dict(initial_state=experiment.initial_state, train_steps=train_steps,
              eval_losses=eval_losses, snapshot=snapshot if draw is not None else None,
              data_shape=experiment.data_shape)


@register_method(name='score')
def score_method(config, sample_sharding=None) -> Method:
  """A score model on the data (on latents when config.latent.autoencoder is set)."""
  conds = conditions_lib.get_conditions(config)
  batch_arrays = score_batch_arrays(config, conds)
  space = latent_runs.load_latent_space(config) if latent_runs.is_latent_run(config) else None
  experiment = build_experiment(config, None if space is None else space.latent_shape)
  fields = score_method_of(config, experiment, config_checks.get(config, 'training.batch_size'),
                           conds, sample_sharding)
  if space is not None:
    fields = latent_runs.latent_method(space, fields, batch_arrays)
  else:
    fields['batch_arrays'] = batch_arrays
    inverse_scaler = datasets.get_data_inverse_scaler(config)
    if fields['snapshot'] is not None:
      draw = fields['snapshot']
      fields['snapshot'] = lambda state, key, arrays: inverse_scaler(draw(state, key, arrays))

  def evaluator(mesh):
    return score_eval.ScoreEvaluator(config, mesh, fields['batch_arrays'], fields['eval_losses'],
                                     experiment, space, conds)

  def draw_samples(mesh, state, out):
    return score_eval.draw_samples(config, mesh, experiment, space, conds, state, out)

  return Method(evaluator=evaluator, draw_samples=draw_samples, **fields)


@register_method(name='autoencoder')
def autoencoder_method(config, sample_sharding=None) -> Method:
  """The KL autoencoder (config section `autoencoder`) on images centred to [-1, 1]; its
  evaluation loss is the per-image mean reconstruction error of the posterior mean, its snapshot
  the first test images beside their reconstructions."""
  del sample_sharding
  parts = autoencoder_training.from_config(config)
  image_shape = datasets.data_shape(config)
  state = autoencoder_training.init_state(
      jax.random.PRNGKey(config_checks.get(config, 'seed')), parts.autoencoder,
      parts.discriminator, parts.objective, parts.optimizer, parts.optimizer, image_shape)
  step = autoencoder_training.get_train_step(parts.autoencoder, parts.discriminator,
                                             parts.objective, parts.optimizer, parts.optimizer,
                                             parts.perceptual)

  def batch_arrays(batch):
    return {'x': 2.0 * np.asarray(batch['x'], np.float32) - 1.0}

  def train_steps(state, batches):
    if batches['x'].shape[0] == 1:
      state, metrics = step(state, batches['x'][0])
      return state, jax.tree.map(lambda m: m[None], metrics)
    return jax.lax.scan(step, state, batches['x'])

  def reconstruct(state, images):
    return parts.autoencoder.apply({'params': state.params['autoencoder']}, images)

  def eval_losses(state, key, arrays):
    del key
    error = autoencoder_losses.reconstruction_error(
        arrays['x'], reconstruct(state, arrays['x']), parts.objective.reconstruction)
    return error.reshape(error.shape[0], -1).mean(axis=1)

  def snapshot(state, key, arrays):
    del key
    images = arrays['x'][:32]
    pairs = jnp.stack([images, jnp.clip(reconstruct(state, images), -1.0, 1.0)], axis=1)
    return (pairs.reshape(-1, *images.shape[1:]) + 1.0) / 2.0

  def evaluator(mesh):
    return autoencoder_eval.AutoencoderEvaluator(config, mesh, parts, batch_arrays, eval_losses)

  return Method(initial_state=state, batch_arrays=batch_arrays, train_steps=train_steps,
                eval_losses=eval_losses, snapshot=snapshot, data_shape=image_shape,
                evaluator=evaluator, draw_samples=None)


def checkpoint_template(config, experiment: Experiment):
  """The state a checkpoint of the run of `config` holds (for restoring it): the experiment's
  TrainState, with a target network for the consistency methods."""
  if method_name(config) in consistency_runs.METHODS:
    return consistency_runs.consistency_state(experiment.initial_state)
  return experiment.initial_state


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A finished score run as a teacher: its SDE, the EDM levels it covers (at t = 0 and T) and
  its EMA model's denoiser D(x, sigma, class_labels=None) in EDM units."""

  sde: sde_lib.SDE
  levels: tuple
  denoiser: Callable


def load_teacher(config, student: Experiment) -> Teacher:
  """The teacher of a CD run: the newest checkpoint of the score run in training.teacher (a
  workdir), checked to be a continuous pixel-space run on the student's data shape with the
  student's conditioning. ValueError / FileNotFoundError naming the field otherwise."""
  path = config.training.get('teacher')
  if not isinstance(path, str) or not path:
    raise ValueError(f"training.method = 'cd' distils a trained score run: set training.teacher "
                     f'to its workdir (got {path!r}).')
  teacher_config = workdir_lib.read_config(path)
  problem = None
  if method_name(teacher_config) != 'score':
    problem = f'it trains {method_name(teacher_config)!r}, not a score model'
  elif latent_runs.is_latent_run(teacher_config):
    problem = 'it is a latent run (distil a pixel-space run)'
  elif not teacher_config.training.continuous:
    problem = 'it was trained with training.continuous = False (distil a continuous run)'
  elif models_lib.num_data_classes(teacher_config) != models_lib.num_data_classes(config):
    problem = (f'its model.num_classes = {models_lib.num_data_classes(teacher_config)} differs '
               f"from the student's {models_lib.num_data_classes(config)}")
  if problem is None:
    experiment = build_experiment(teacher_config)
    if tuple(experiment.data_shape) != tuple(student.data_shape):
      problem = (f'its data shape {tuple(experiment.data_shape)} differs from the student\'s '
                 f'{tuple(student.data_shape)}')
  if problem is not None:
    raise ValueError(f'Config field training.teacher = {path!r} cannot teach this run: '
                     f'{problem}.')
  restored = checkpoints.restore_newest(path, experiment.initial_state)
  if restored is None:
    raise FileNotFoundError(f'training.teacher = {path!r} has no checkpoint; train it first.')
  score_fn = models_lib.get_score_fn(experiment.sde, experiment.model,
                                     {'params': restored[0].params_ema}, continuous=True)
  return Teacher(experiment.sde, consistency_runs.levels_of_sde(experiment.sde),
                 distillation.score_denoiser(score_fn, experiment.sde))


def consistency_method(config, sample_sharding=None) -> Method:
  """A consistency model (model.preconditioning = 'consistency') distilled from
  training.teacher ('cd') or trained from data ('ct', 'ict'); see consistency_runs."""
  name = method_name(config)
  if latent_runs.is_latent_run(config):
    raise ValueError(f'training.method = {name!r} trains in pixel space; set latent.autoencoder '
                     'to None.')
  if name != 'cd' and config.training.get('teacher') is not None:
    raise ValueError(f'Config field training.teacher = {config.training.teacher!r} is for '
                     f"training.method = 'cd'; {name!r} trains from data alone (set it to None).")
  conds = conditions_lib.get_conditions(config)
  batch_arrays = score_batch_arrays(config, conds)
  experiment = build_experiment(config)
  recipe = consistency_runs.recipe_from_config(
      config, name, consistency_runs.levels_of_sde(experiment.sde)[1])
  teacher = None
  if name == 'cd':
    teacher = load_teacher(config, experiment)
    consistency_runs.check_teacher_levels(recipe, *teacher.levels)
    teacher = teacher.denoiser
  distance = consistency_runs.get_distance(config, recipe)
  null = None if conds is None else conds.null
  steps = consistency_runs.get_train_step(
      recipe, experiment.model, experiment.optimizer,
      config_checks.unit_interval(config, 'model.ema_rate'), distance, teacher,
      losses.label_dropout(config), null)
  example_losses = consistency_runs.get_eval_losses(recipe, experiment.model, distance, teacher)
  draw = None
  if bool(config_checks.get(config, 'training.snapshot_sampling')):
    draw = sampling.get_model_sampler(
        config, experiment.sde, experiment.model,
        (config_checks.get(config, 'training.batch_size'), *experiment.data_shape),
        sharding=sample_sharding, null_condition=null)
  inverse_scaler = datasets.get_data_inverse_scaler(config)

  def train_steps(state, batches):
    return steps(state, batches['x'], batches.get('labels'))

  def eval_losses(state, key, arrays):
    return example_losses(state, key, arrays['x'], arrays.get('labels'))

  def snapshot(state, key, arrays):
    return inverse_scaler(draw({'params': state.params_ema}, key)[0])

  def evaluator(mesh):
    return score_eval.ScoreEvaluator(config, mesh, batch_arrays, eval_losses, experiment, None,
                                     conds)

  def draw_samples(mesh, state, out):
    return score_eval.draw_samples(config, mesh, experiment, None, conds, state, out)

  return Method(initial_state=consistency_runs.consistency_state(experiment.initial_state),
                batch_arrays=batch_arrays, train_steps=train_steps, eval_losses=eval_losses,
                snapshot=snapshot if draw is not None else None,
                data_shape=experiment.data_shape, evaluator=evaluator,
                draw_samples=draw_samples)


for _name in consistency_runs.METHODS:
  register_method(consistency_method, name=_name)
