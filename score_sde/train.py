"""The training driver: train(config, workdir).

A run resumes from the latest checkpoint in workdir/checkpoints when restarted in the same
workdir, and continues with exactly the batches and random numbers an uninterrupted run would
have used. Every config error is raised before anything is compiled.
"""
import dataclasses
import os
import time

import jax
import numpy as np
import tqdm

from score_sde import checkpoints, config_checks, datasets, losses, metrics_log, plots, workdir
from score_sde import models as models_lib
from score_sde import sampling
from score_sde import sde as sde_lib


@dataclasses.dataclass(frozen=True)
class Experiment:
  """What a config builds: the SDE, the model and its initial training state."""

  sde: sde_lib.SDE
  model: object
  data_shape: tuple
  optimizer: object
  initial_state: losses.TrainState


def build_experiment(config) -> Experiment:
  """Validates the config's SDE, data, model and optimizer and initialises the state from
  config.seed (parameters, EMA copy, optimizer state, base RNG key)."""
  sde = sde_lib.get_sde(config)
  data_shape = datasets.data_shape(config)
  optimizer = losses.get_optimizer(config)
  init_key, state_key = jax.random.split(jax.random.PRNGKey(config_checks.get(config, 'seed')))
  model, variables = models_lib.init_model(init_key, config, data_shape)
  return Experiment(sde, model, data_shape, optimizer,
                    losses.init_train_state(state_key, variables['params'], optimizer))


def _crossed(before: int, after: int, every: int) -> bool:
  """Whether a multiple of `every` lies in (before, after]."""
  return after // every > before // every


def _check_finite(step_losses: np.ndarray, first_step: int) -> None:
  bad = np.flatnonzero(~np.isfinite(step_losses))
  if bad.size:
    raise FloatingPointError(f'Training loss is {step_losses[bad[0]]} at step {first_step + bad[0]}; '
                             'stopping. The checkpoints saved before it are intact.')


def save_snapshot_samples(directory: str, samples: np.ndarray, data: np.ndarray) -> str:
  """Writes samples.npz and, for 2-D data, samples.png (samples beside data) into `directory`."""
  os.makedirs(directory, exist_ok=True)
  np.savez(os.path.join(directory, 'samples.npz'), samples=samples)
  if samples.ndim == 2 and samples.shape[1] == 2:
    return plots.save_scatter(os.path.join(directory, 'samples.png'),
                              {'data': data, 'samples': samples})
  return directory


def train(config, workdir_path: str) -> losses.TrainState:
  """Trains the model of `config` in `workdir_path`; returns the final TrainState."""
  # Validate and build everything before compiling anything.
  n_iters = config_checks.positive_int(config, 'training.n_iters')
  batch_size = config_checks.positive_int(config, 'training.batch_size')
  n_jitted = config_checks.positive_int(config, 'training.n_jitted_steps')
  log_freq = config_checks.positive_int(config, 'training.log_freq')
  eval_freq = config_checks.positive_int(config, 'training.eval_freq')
  snapshot_freq = config_checks.positive_int(config, 'training.snapshot_freq')
  snapshot_sampling = bool(config_checks.get(config, 'training.snapshot_sampling'))
  experiment = build_experiment(config)
  sde, model = experiment.sde, experiment.model
  train_steps = jax.jit(losses.get_train_step(config, sde, model, experiment.optimizer),
                        donate_argnums=0)
  eval_step = jax.jit(losses.get_eval_step(config, sde, model))
  if snapshot_sampling:
    draw = sampling.get_model_sampler(config, sde, model, (batch_size, *experiment.data_shape))
  train_data = datasets.get_dataset(config, 'train', batch_size)
  eval_batch = next(datasets.get_dataset(config, 'test', batch_size))['x']
  scaler = datasets.get_data_scaler(config)
  inverse_scaler = datasets.get_data_inverse_scaler(config)

  store = checkpoints.CheckpointStore(os.path.join(workdir_path, 'checkpoints'))
  workdir.check_or_record_config(config, workdir_path, has_checkpoints=bool(store.steps()))
  state = experiment.initial_state
  if store.latest_step() is not None:
    state, data_state = store.restore(store.latest_step(), state)
    train_data.set_state(data_state)
    print(f'Resumed from step {int(state.step)} of {store.directory}')
  log = metrics_log.MetricsLog(workdir_path)
  eval_key = jax.random.PRNGKey(config.seed + 1)

  step = int(state.step)
  progress = tqdm.tqdm(total=n_iters, initial=step, unit='step', dynamic_ncols=True,
                       mininterval=1.0, desc='train')
  last_log_time, last_log_step = time.perf_counter(), step
  while step < n_iters:
    n = min(n_jitted, n_iters - step)
    x0s = scaler(np.stack([next(train_data)['x'] for _ in range(n)]))
    state, step_losses = train_steps(state, x0s)
    before, step = step, step + n
    progress.update(n)
    if _crossed(before, step, log_freq) or step == n_iters:
      step_losses = np.asarray(step_losses)
      _check_finite(step_losses, before + 1)
      now = time.perf_counter()
      rate = (step - last_log_step) / (now - last_log_time)
      last_log_time, last_log_step = now, step
      log.write(step, **{'train/loss': step_losses.mean(), 'train/steps_per_sec': rate})
      progress.set_postfix(loss=f'{step_losses.mean():.4g}')
    if _crossed(before, step, eval_freq):
      eval_loss = eval_step(state, jax.random.fold_in(eval_key, step), scaler(eval_batch))
      log.write(step, **{'eval/loss': eval_loss})
    if _crossed(before, step, snapshot_freq) or step == n_iters:
      _check_finite(np.asarray(step_losses), before + 1)
      store.save(step, state, train_data.get_state())
      if snapshot_sampling:
        samples, _ = draw({'params': state.params_ema}, jax.random.PRNGKey(config.seed + 2))
        save_snapshot_samples(os.path.join(workdir_path, 'samples', f'step_{step}'),
                              np.asarray(inverse_scaler(samples)), eval_batch)
  progress.close()
  store.wait()
  store.close()
  log.close()
  return state
