"""The training driver: train(config, workdir).

A run resumes from the newest readable checkpoint (workdir/checkpoints or checkpoints-meta) when
restarted in the same workdir, and continues with exactly the batches and random numbers an
uninterrupted run would have used: on CPU it ends bitwise equal to it, even when killed mid-save.
Every config error is raised before anything is compiled.
"""
import dataclasses
import os
import time

import jax
import numpy as np
import tqdm

from score_sde import checkpoints, config_checks, datasets, losses, metrics_log, parallel, plots
from score_sde import workdir
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


def _chunk_length(step: int, n_jitted: int, n_iters: int, checkpoint_freqs: tuple) -> int:
  """Steps of the next compiled call: n_jitted, cut short so that it ends on the next checkpoint
  step or on n_iters. Checkpoints then hold exactly their step, and a resumed run makes the same
  calls as an uninterrupted one."""
  return min([n_jitted, n_iters - step] + [every - step % every for every in checkpoint_freqs])


def _check_finite(step_losses: list, first_step: int) -> None:
  """Raises FloatingPointError naming the first step whose loss is NaN or infinite; step_losses
  are the per-step losses of consecutive calls starting at step `first_step`."""
  losses = np.concatenate([np.asarray(chunk) for chunk in step_losses])
  bad = np.flatnonzero(~np.isfinite(losses))
  if bad.size:
    raise FloatingPointError(f'Training loss is {losses[bad[0]]} at step {first_step + bad[0]}; '
                             'stopping. The checkpoints saved before it are intact.')


def save_snapshot_samples(directory: str, samples: np.ndarray, data) -> str:
  """Writes samples.npz and a picture into `directory`: for 2-D data samples.png (samples beside
  `data`, test points), for images an image grid of the first 64 (`data` unused)."""
  os.makedirs(directory, exist_ok=True)
  np.savez(os.path.join(directory, 'samples.npz'), samples=samples)
  if samples.ndim == 2 and samples.shape[1] == 2:
    return plots.save_scatter(os.path.join(directory, 'samples.png'),
                              {'data': data, 'samples': samples})
  if samples.ndim == 4:
    return plots.save_image_grid(os.path.join(directory, 'samples.png'), samples[:64])
  return directory


def data_iterators(config) -> tuple:
  """(training batches, test batches for the eval loss) of this process, each
  training.batch_size / process_count() rows a batch; their states are checkpointed."""
  local_batch = parallel.per_process_batch(
      config_checks.positive_int(config, 'training.batch_size'), 'training.batch_size')
  return (datasets.get_dataset(config, 'train', local_batch),
          datasets.get_dataset(config, 'test', local_batch))


def data_state(train_data, eval_data) -> dict:
  """The checkpointed state of the iterators of `data_iterators`."""
  return {'train': train_data.get_state(), 'eval': eval_data.get_state()}


def batch_labels(batch: dict, labelled: bool):
  """The batch's 'label' as int32 (B,) if `labelled` (for a class-conditional model), else None."""
  return np.asarray(batch['label'], np.int32) if labelled else None


def _stack_batches(data, n: int, labelled: bool) -> tuple:
  """(x, labels) of n consecutive batches of an iterator, stacked: x (n, B, ...) and labels int32
  (n, B) if `labelled` (else None)."""
  batches = [next(data) for _ in range(n)]
  labels = np.stack([batch_labels(b, True) for b in batches]) if labelled else None
  return np.stack([b['x'] for b in batches]), labels


def needs_labels(config, split: str) -> bool:
  """Whether the model is class-conditional, so that its loss takes the batches' 'label';
  ValueError if it is and the split's batches have none."""
  num_classes = models_lib.num_data_classes(config)
  if num_classes is None:
    return False
  if not datasets.has_labels(config, split):
    raise ValueError(f'Config field model.num_classes = {num_classes} makes the model '
                     f'class-conditional, but data.dataset = {config.data.dataset!r} yields no '
                     f"'label' ({split} split); use a labelled dataset or leave model.num_classes "
                     'unset.')
  return True


def train(config, workdir_path: str) -> losses.TrainState:
  """Trains the model of `config` in `workdir_path` on every device of every process; returns
  the final TrainState (replicated global arrays).

  Each process reads training.batch_size / process_count() rows of every batch; the batch (and
  the class labels of a class-conditional model) is split over all devices and the state
  replicated. Checkpoints: see score_sde.checkpoints.
  """
  # Validate and build everything before compiling anything.
  n_iters = config_checks.positive_int(config, 'training.n_iters')
  batch_size = config_checks.positive_int(config, 'training.batch_size')
  n_jitted = config_checks.positive_int(config, 'training.n_jitted_steps')
  log_freq = config_checks.positive_int(config, 'training.log_freq')
  eval_freq = config_checks.positive_int(config, 'training.eval_freq')
  snapshot_freq = config_checks.positive_int(config, 'training.snapshot_freq')
  preemption_freq = config_checks.positive_int(config, 'training.snapshot_freq_for_preemption')
  snapshot_sampling = bool(config_checks.get(config, 'training.snapshot_sampling'))
  parallel.per_process_batch(batch_size, 'training.batch_size')
  labelled = needs_labels(config, 'train') and needs_labels(config, 'test')
  experiment = build_experiment(config)
  sde, model = experiment.sde, experiment.model
  mesh = parallel.data_mesh()
  replicated = parallel.replicated(mesh)
  steps_sharded = parallel.batch_sharded(mesh, batch_axis=1)
  train_steps = jax.jit(losses.get_train_step(config, sde, model, experiment.optimizer),
                        in_shardings=(replicated, steps_sharded, steps_sharded),
                        out_shardings=(replicated, replicated), donate_argnums=0)
  example_losses = losses.get_eval_step(config, sde, model)
  eval_step = jax.jit(lambda state, key, x0, labels: example_losses(state, key, x0, labels).mean(),
                      in_shardings=(replicated, replicated, parallel.batch_sharded(mesh),
                                    parallel.batch_sharded(mesh)),
                      out_shardings=replicated)
  if snapshot_sampling:
    draw = sampling.get_model_sampler(config, sde, model, (batch_size, *experiment.data_shape),
                                      sharding=parallel.batch_sharded(mesh))
  train_data, eval_data = data_iterators(config)
  scaler = datasets.get_data_scaler(config)
  inverse_scaler = datasets.get_data_inverse_scaler(config)

  stores = checkpoints.TrainingCheckpoints(workdir_path)
  primary = parallel.is_primary()
  if primary:
    workdir.check_or_record_config(config, workdir_path, has_checkpoints=stores.any_saved())
  state = parallel.replicate(mesh, experiment.initial_state)
  restored = stores.restore_latest(state)
  if restored is not None:
    state, saved_data_state = restored
    train_data.set_state(saved_data_state['train'])
    eval_data.set_state(saved_data_state['eval'])
    print(f'Resumed from step {int(state.step)} of {workdir_path}')
  log = metrics_log.MetricsLog(workdir_path) if primary else None
  eval_key = jax.random.PRNGKey(config.seed + 1)

  step = int(state.step)
  progress = tqdm.tqdm(total=n_iters, initial=step, unit='step', dynamic_ncols=True,
                       mininterval=1.0, desc='train', disable=not primary)
  unchecked_losses, first_unchecked = [], step + 1
  last_log_time, last_log_step = time.perf_counter(), step
  while step < n_iters:
    n = _chunk_length(step, n_jitted, n_iters, (snapshot_freq, preemption_freq))
    x0s, labels = _stack_batches(train_data, n, labelled)
    batches = parallel.global_batch(mesh, scaler(x0s), batch_axis=1)
    state, step_losses = train_steps(state, batches,
                                     parallel.global_batch(mesh, labels, batch_axis=1))
    unchecked_losses.append(step_losses)
    before, step = step, step + n
    progress.update(n)
    keep = _crossed(before, step, snapshot_freq) or step == n_iters
    preempt = _crossed(before, step, preemption_freq) and not keep
    if _crossed(before, step, log_freq) or keep or preempt:
      _check_finite(unchecked_losses, first_unchecked)
      unchecked_losses, first_unchecked = [], step + 1
    if _crossed(before, step, log_freq) or step == n_iters:
      now = time.perf_counter()
      rate = (step - last_log_step) / (now - last_log_time)
      last_log_time, last_log_step = now, step
      if primary:
        log.write(step, **{'train/loss': np.asarray(step_losses).mean(),
                           'train/steps_per_sec': rate})
      progress.set_postfix(loss=f'{np.asarray(step_losses).mean():.4g}')
    if _crossed(before, step, eval_freq):
      eval_data_batch = next(eval_data)
      eval_batch = parallel.global_batch(mesh, scaler(eval_data_batch['x']))
      eval_labels = parallel.global_batch(mesh, batch_labels(eval_data_batch, labelled))
      eval_loss = eval_step(state, jax.random.fold_in(eval_key, step), eval_batch, eval_labels)
      if primary:
        log.write(step, **{'eval/loss': eval_loss})
    if keep or preempt:
      stores.save(step, state, data_state(train_data, eval_data), kept=keep, preemption=preempt)
    if keep and snapshot_sampling:
      samples, _ = draw({'params': state.params_ema}, jax.random.PRNGKey(config.seed + 2))
      samples = parallel.to_host(inverse_scaler(samples))
      if primary:
        reference = (next(datasets.get_dataset(config, 'test', batch_size))['x']
                     if samples.ndim == 2 else None)
        save_snapshot_samples(os.path.join(workdir_path, 'samples', f'step_{step}'), samples,
                              reference)
  progress.close()
  stores.close()
  if primary:
    log.close()
  return state
