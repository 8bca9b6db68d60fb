"""Evaluation and sampling of a trained run: evaluate(config, workdir, eval_folder) and
sample(config, workdir, eval_folder).

Both load the latest checkpoint of workdir/checkpoints and draw config.eval.num_samples samples
from the EMA parameters in batches of config.eval.batch_size (sample k is the same whatever the
batch size). Outputs go to a new directory workdir/<eval_folder>/step_<k> (with a numeric suffix
if it exists already), so nothing written before is ever overwritten.
"""
import json
import os
import time

import jax
import numpy as np

from score_sde import checkpoints, config_checks, datasets, evaluation, likelihood, losses, plots
from score_sde import sampling
from score_sde import train as train_lib
from score_sde import workdir


def _restore_latest(config, workdir_path: str):
  experiment = train_lib.build_experiment(config)
  store = checkpoints.CheckpointStore(os.path.join(workdir_path, 'checkpoints'))
  step = store.latest_step()
  if step is None:
    raise FileNotFoundError(f'No checkpoint in {store.directory}; train first with --mode train.')
  workdir.check_or_record_config(config, workdir_path, has_checkpoints=True)
  state, _ = store.restore(step, experiment.initial_state)
  store.close()
  return experiment, state, step


def _draw_samples(config, experiment, state) -> tuple:
  """(samples (num_samples, ...), NFE summary, seconds) from the EMA parameters. The NFE
  summary is {'nfe': mean per sample, 'nfe_max': max} (equal for PC; the ODE adapts per sample)."""
  num_samples = config_checks.positive_int(config, 'eval.num_samples')
  batch_size = min(config_checks.positive_int(config, 'eval.batch_size'), num_samples)
  draw = sampling.get_model_sampler(config, experiment.sde, experiment.model,
                                    (batch_size, *experiment.data_shape))
  key = jax.random.PRNGKey(config_checks.get(config, 'seed') + 3)
  start, batches, nfes = time.perf_counter(), [], []
  for first in range(0, num_samples, batch_size):
    samples, nfe = draw({'params': state.params_ema}, key, first)
    batches.append(np.asarray(samples))
    nfes.append(np.broadcast_to(np.asarray(nfe), (batch_size,)))
  seconds = time.perf_counter() - start
  inverse_scaler = datasets.get_data_inverse_scaler(config)
  nfes = np.concatenate(nfes)[:num_samples]
  nfe_summary = {'nfe': float(nfes.mean()), 'nfe_max': int(nfes.max())}
  return np.asarray(inverse_scaler(np.concatenate(batches)[:num_samples])), nfe_summary, seconds


def _save_picture(path: str, samples: np.ndarray):
  """A scatter plot for 2-D points, an image grid (first 64) for images; None otherwise."""
  if samples.ndim == 2 and samples.shape[1] == 2:
    return plots.save_scatter(path, {'samples': samples})
  if samples.ndim == 4 and samples.shape[-1] in (1, 3):
    return plots.save_image_grid(path, samples[:64])
  return None


def _write_json(path: str, record: dict) -> str:
  with open(path, 'w') as f:
    json.dump(record, f, indent=2)
  return path


def sample(config, workdir_path: str, eval_folder: str = 'eval') -> str:
  """Draws samples; writes samples.npz, a picture and sampling.json (NFE, wall time). Returns
  the output directory."""
  experiment, state, step = _restore_latest(config, workdir_path)
  samples, nfe, seconds = _draw_samples(config, experiment, state)
  out = workdir.fresh_directory(os.path.join(workdir_path, eval_folder, f'step_{step}'))
  np.savez(os.path.join(out, 'samples.npz'), samples=samples)
  _save_picture(os.path.join(out, 'samples.png'), samples)
  _write_json(os.path.join(out, 'sampling.json'),
              {'step': step, 'num_samples': len(samples), **nfe, 'seconds': seconds,
               'sampling': config.sampling.to_dict()})
  print(f'Wrote {len(samples)} samples of step {step} to {out}')
  return out


def _bits_per_dim(config, experiment, state, test_stream) -> dict:
  """Bits/dim of eval.bpd_num_samples test points through the probability-flow ODE, over
  eval.bpd_num_repeats passes (fresh dequantization noise and probes each): the mean over all
  per-point values and its standard error. Points are taken in whole batches of
  eval.batch_size (one compiled shape); a remainder is left out and bpd_num_values says how
  many values were used."""
  num_points = config_checks.positive_int(config, 'eval.bpd_num_samples')
  repeats = config_checks.positive_int(config, 'eval.bpd_num_repeats')
  batch_size = min(config_checks.positive_int(config, 'eval.batch_size'), num_points)
  points = next(test_stream)['x'][:num_points]
  bpd_fn = likelihood.get_model_bpd_fn(config, experiment.sde, experiment.model)
  key = jax.random.PRNGKey(config_checks.get(config, 'seed') + 5)
  start, values, nfes = time.perf_counter(), [], []
  for repeat in range(repeats):
    for first in range(0, num_points - batch_size + 1, batch_size):
      batch_key = jax.random.fold_in(jax.random.fold_in(key, repeat), first)
      bpd, _, nfe = bpd_fn({'params': state.params_ema}, batch_key,
                           points[first:first + batch_size])
      values.append(np.asarray(bpd))
      nfes.append(np.asarray(nfe))
  values, nfes = np.concatenate(values), np.concatenate(nfes)
  return {'bpd': float(values.mean()),
          'bpd_standard_error': float(values.std(ddof=1) / np.sqrt(len(values))),
          'bpd_num_values': len(values), 'bpd_nfe': float(nfes.mean()),
          'bpd_seconds': time.perf_counter() - start}


def evaluate(config, workdir_path: str, eval_folder: str = 'eval') -> dict:
  """Evaluates the latest checkpoint: test loss, bits/dim through the probability-flow ODE (if
  eval.enable_bpd; with data.dequantization 'none' it is -log2 p(x) / d of the data in its own
  units), and for 2-D data the energy distance between samples and test data next to the same
  statistic between two independent data draws.

  Writes report.json, samples.npz and samples_vs_data.png; returns the report.
  """
  experiment, state, step = _restore_latest(config, workdir_path)
  num_samples = config_checks.positive_int(config, 'eval.num_samples')
  test_stream = datasets.get_dataset(config, 'test', num_samples)
  test_data = next(test_stream)['x']
  scaler = datasets.get_data_scaler(config)
  eval_step = jax.jit(losses.get_eval_step(config, experiment.sde, experiment.model))
  test_loss = float(eval_step(state, jax.random.PRNGKey(config.seed + 4), scaler(test_data)))
  samples, nfe, seconds = _draw_samples(config, experiment, state)
  report = {'step': step, 'test_loss': test_loss, 'num_samples': len(samples), **nfe,
            'sampling_seconds': seconds}
  if config_checks.get(config, 'eval.enable_bpd'):
    report.update(_bits_per_dim(config, experiment, state, test_stream))
  out = workdir.fresh_directory(os.path.join(workdir_path, eval_folder, f'step_{step}'))
  np.savez(os.path.join(out, 'samples.npz'), samples=samples)
  if samples.ndim == 2 and samples.shape[1] == 2:
    # A second, independent draw of the data calibrates the statistic.
    reference = next(test_stream)['x']
    report['energy_distance'] = evaluation.energy_distance(samples, test_data)
    report['energy_distance_data_vs_data'] = evaluation.energy_distance(reference, test_data)
    report['energy_distance_ratio'] = (report['energy_distance'] /
                                       report['energy_distance_data_vs_data'])
    report['picture'] = plots.save_scatter(os.path.join(out, 'samples_vs_data.png'),
                                           {'data (test split)': test_data, 'samples': samples})
  report['report'] = _write_json(os.path.join(out, 'report.json'), report)
  print(json.dumps(report, indent=2))
  return report
