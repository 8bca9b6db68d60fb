"""The training driver: train(config, workdir).

A run resumes from the newest readable checkpoint (workdir/checkpoints or checkpoints-meta) when
restarted in the same workdir, and continues with exactly the batches and random numbers an
uninterrupted run would have used: on CPU it ends bitwise equal to it, even when killed mid-save.
Every config error is raised before anything is compiled.
"""
import os
import time

import jax
import numpy as np
import tqdm

from score_sde import checkpoints, config_checks, datasets, methods, metrics_log
from score_sde import parallel, plots, workdir


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


def _stack_batches(data, n: int, batch_arrays) -> dict:
  """The arrays of n consecutive batches of an iterator (method.batch_arrays of each), stacked on
  a new leading axis: {name: (n, B, ...)}."""
  arrays = [batch_arrays(next(data)) for _ in range(n)]
  return {name: np.stack([a[name] for a in arrays]) for name in arrays[0]}


def _mean_metrics(metrics: dict) -> dict:
  """{'train/<name>': mean over the steps of a call} of the steps' metrics."""
  return {f'train/{name}': float(np.asarray(values).mean()) for name, values in metrics.items()}


def train(config, workdir_path: str):
  """Trains the run of `config` (its training.method, see methods.py) in `workdir_path` on every
  device of every process; returns the final state (replicated global arrays).

  Each process reads training.batch_size / process_count() rows of every batch; the batch (and
  its labels) is split over all devices and the state replicated. Checkpoints: see
  score_sde.checkpoints. Fields derived from the data (a latent run's unset scale factor, a
  caption model's vocabulary) are computed on the first start and recorded in
  workdir/config.json (methods.resolve_config).
  """
  # Validate and build everything before compiling anything.
  n_iters = config_checks.positive_int(config, 'training.n_iters')
  batch_size = config_checks.positive_int(config, 'training.batch_size')
  n_jitted = config_checks.positive_int(config, 'training.n_jitted_steps')
  log_freq = config_checks.positive_int(config, 'training.log_freq')
  eval_freq = config_checks.positive_int(config, 'training.eval_freq')
  snapshot_freq = config_checks.positive_int(config, 'training.snapshot_freq')
  preemption_freq = config_checks.positive_int(config, 'training.snapshot_freq_for_preemption')
  parallel.per_process_batch(batch_size, 'training.batch_size')
  config = methods.resolve_config(config, workdir_path)
  mesh = parallel.data_mesh()
  method = methods.get_method(config, sample_sharding=parallel.batch_sharded(mesh))
  replicated = parallel.replicated(mesh)
  train_steps = jax.jit(method.train_steps, in_shardings=(replicated,
                                                          parallel.batch_sharded(mesh, 1)),
                        out_shardings=(replicated, replicated), donate_argnums=0)
  eval_step = jax.jit(lambda state, key, arrays: method.eval_losses(state, key, arrays).mean(),
                      in_shardings=(replicated, replicated, parallel.batch_sharded(mesh)),
                      out_shardings=replicated)
  snapshot = None if method.snapshot is None else jax.jit(method.snapshot)
  train_data, eval_data = data_iterators(config)

  stores = checkpoints.TrainingCheckpoints(workdir_path)
  primary = parallel.is_primary()
  if primary:
    workdir.check_or_record_config(config, workdir_path, has_checkpoints=stores.any_saved())
  state = parallel.replicate(mesh, method.initial_state)
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
    batches = parallel.global_batch(mesh, _stack_batches(train_data, n, method.batch_arrays),
                                    batch_axis=1)
    state, metrics = train_steps(state, batches)
    unchecked_losses.append(metrics['loss'])
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
      means = _mean_metrics(metrics)
      if primary:
        log.write(step, **means, **{'train/steps_per_sec': rate})
      progress.set_postfix(loss=f"{means['train/loss']:.4g}")
    if _crossed(before, step, eval_freq):
      arrays = parallel.global_batch(mesh, method.batch_arrays(next(eval_data)))
      eval_loss = eval_step(state, jax.random.fold_in(eval_key, step), arrays)
      if primary:
        log.write(step, **{'eval/loss': eval_loss})
    if keep or preempt:
      stores.save(step, state, data_state(train_data, eval_data), kept=keep, preemption=preempt)
    if keep and snapshot is not None and bool(config_checks.get(config,
                                                                'training.snapshot_sampling')):
      test_batch = next(datasets.get_dataset(config, 'test', batch_size))
      pictured = snapshot(state, jax.random.PRNGKey(config.seed + 2),
                          method.batch_arrays(test_batch))
      pictured = parallel.to_host(pictured)
      if primary:
        save_snapshot_samples(os.path.join(workdir_path, 'samples', f'step_{step}'), pictured,
                              test_batch['x'] if pictured.ndim == 2 else None)
  progress.close()
  stores.close()
  if primary:
    log.close()
  return state
