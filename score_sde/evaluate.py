"""Evaluation of a training run's checkpoints, and sampling: `evaluate(config, workdir,
eval_folder)` (--mode eval) and `sample(config, workdir, eval_folder)` (--mode sample).

`evaluate` takes checkpoints eval.begin_ckpt..eval.end_ckpt, in the official numbering: checkpoint
k is step k * training.snapshot_freq of workdir/checkpoints. For each that exists (optionally
waiting for training to write the others), it writes to workdir/<eval_folder>/step_<step>/:

  loss.json             eval.enable_loss: mean EMA loss over the whole test split
  bpd_repeat_<r>.npz    eval.enable_bpd: bits/dim of every example of eval.bpd_dataset (or its first
                        eval.bpd_num_samples), pass r of eval.bpd_num_repeats
  samples/batch_<i>.npz eval.enable_sampling (always for 2-D data): eval.num_samples samples in
                        batches of eval.batch_size, with their Inception features for images
  samples.npz, samples.png (or samples_vs_data.png for 2-D data)
  report.json           everything above plus FID / KID / Inception score (images, with
                        eval.fid_stats) or the energy distance (2-D data); for the digits
                        FD-digits (digits_features.py) and, class-conditional, the fraction of
                        samples showing their class

and appends the report to workdir/<eval_folder>/reports.jsonl. Each file is written once,
atomically, and reused when the evaluation is restarted, so a preempted evaluation resumes where it
stopped and nothing is overwritten. Work is split over every device of every process as in
training; only process 0 writes.
"""
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from score_sde import checkpoints, config_checks, datasets, digits_features, evaluation
from score_sde import inception, likelihood, losses, parallel, plots, sampling
from score_sde import models as models_lib
from score_sde import workdir
from score_sde import train as train_lib

POLL_SECONDS = 5.0
IS_SPLITS = 10  # the Inception score's splits (Salimans et al. 2016)
# Fields that change what an eval folder holds; resuming into a folder with others is refused.
EVAL_SECTIONS = ('seed', 'sampling', 'likelihood', 'eval', 'data')
RANGE_FIELDS = ('begin_ckpt', 'end_ckpt')


def _write_once(path: str, write) -> None:
  """write(temporary path) then rename to `path` (process 0 only); never replaces a file."""
  if parallel.is_primary() and not os.path.exists(path):
    temporary = f'{path}.partial'
    write(temporary)
    os.replace(temporary, path)


def _json_once(path: str, compute) -> dict:
  """The record in `path`, or compute() written there."""
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  record = compute()

  def write(temporary):
    with open(temporary, 'w') as f:
      json.dump(record, f, indent=2)

  _write_once(path, write)
  return record


def _save_npz(path: str, arrays: dict) -> None:
  with open(path, 'wb') as f:
    np.savez(f, **arrays)


def _npz_once(path: str, compute) -> dict:
  """The arrays in `path`, or compute() (a dict of arrays) written there."""
  if os.path.exists(path):
    with np.load(path) as arrays:
      return {k: arrays[k] for k in arrays.files}
  arrays = compute()
  _write_once(path, lambda temporary: _save_npz(temporary, arrays))
  return arrays


class _Plan:
  """The validated evaluation settings of a config."""

  def __init__(self, config):
    self.snapshot_freq = config_checks.positive_int(config, 'training.snapshot_freq')
    begin = config_checks.positive_int(config, 'eval.begin_ckpt')
    end = config_checks.positive_int(config, 'eval.end_ckpt')
    if end < begin:
      raise ValueError(f'eval.end_ckpt = {end} must be >= eval.begin_ckpt = {begin}.')
    self.steps = [k * self.snapshot_freq for k in range(begin, end + 1)]
    self.batch_size = config_checks.positive_int(config, 'eval.batch_size')
    parallel.per_process_batch(self.batch_size, 'eval.batch_size')
    self.toy = datasets.is_toy(config)
    self.data_shape = datasets.data_shape(config)
    self.enable_loss = bool(config_checks.get(config, 'eval.enable_loss'))
    self.enable_bpd = bool(config_checks.get(config, 'eval.enable_bpd'))
    self.enable_sampling = self.toy or bool(config_checks.get(config, 'eval.enable_sampling'))
    self.num_samples = config_checks.positive_int(config, 'eval.num_samples')
    if self.enable_bpd:
      self.bpd_split = config_checks.choice(config, 'eval.bpd_dataset', datasets.SPLITS)
      self.bpd_repeats = config_checks.positive_int(config, 'eval.bpd_num_repeats')
      cap = config.eval.get('bpd_num_samples')
      self.bpd_max_examples = None if cap is None else config_checks.positive_int(
          config, 'eval.bpd_num_samples')
      if self.toy and cap is None:
        raise ValueError('eval.bpd_num_samples must be set for 2-D toy data (endless splits).')
    self.fid_stats = config.eval.get('fid_stats')
    self.inception_weights = None
    if not self.toy and self.enable_sampling and (self.fid_stats or
                                                  config.eval.get('inception_weights') or
                                                  os.environ.get(inception.ENV_WEIGHTS)):
      self.inception_weights = inception.inception_weights_path(config)
      if self.fid_stats and not os.path.exists(self.fid_stats):
        evaluation.load_reference_statistics(self.fid_stats)  # raises, saying how to make it


def _batch_for(num: int, batch_size: int) -> int:
  """A global batch no larger than needed for `num` examples, divisible by the device count."""
  devices = jax.device_count()
  return min(batch_size, -(-num // devices) * devices)


def _eval_config_record(config) -> dict:
  record = json.loads(config.to_json_best_effort())
  record = {k: record[k] for k in EVAL_SECTIONS if k in record}
  for field in RANGE_FIELDS:
    record.get('eval', {}).pop(field, None)
  return record


def _check_or_record_eval_config(config, folder: str) -> None:
  """Records the evaluation settings in folder/eval_config.json, or refuses a folder holding an
  evaluation with other settings (its files would be mixed with this one's)."""
  path = os.path.join(folder, 'eval_config.json')
  new = _eval_config_record(config)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    differences = workdir.changed_fields(old, new)
    if differences:
      raise ValueError(f'{folder} holds an evaluation with other settings '
                       f'({", ".join(differences[:8])}); use a new --eval_folder. Nothing was '
                       'changed.')
    return
  if parallel.is_primary():
    os.makedirs(folder, exist_ok=True)
    with open(path, 'w') as f:
      json.dump(new, f, indent=2)


def _available_steps(store: checkpoints.CheckpointStore, wanted: list, watch_timeout: float):
  """Yields the wanted steps that exist, in order. With watch_timeout > 0, waits for missing ones
  until watch_timeout seconds pass without a new checkpoint."""
  pending = list(wanted)
  last_news = time.monotonic()
  while pending:
    store.reload()
    present = set(store.steps())
    ready = [s for s in pending if s in present]
    for step in ready:
      pending.remove(step)
      last_news = time.monotonic()
      yield step
    if not ready:
      if time.monotonic() - last_news >= watch_timeout:
        break
      time.sleep(min(POLL_SECONDS, max(watch_timeout, 0.0)))
  if pending:
    print(f'Not evaluated (no checkpoint in {store.directory}): steps {pending}')


class _Programs:
  """The jitted programs of an evaluation, compiled once for all its checkpoints: per-example
  losses, bits/dim, and a sampler of eval.batch_size samples (as far as the plan uses them)."""

  def __init__(self, config, plan: _Plan, experiment, mesh):
    sde, model = experiment.sde, experiment.model
    if plan.enable_loss:
      self.example_losses = jax.jit(losses.get_eval_step(config, sde, model))
    if plan.enable_bpd:
      self.bpd_fn = likelihood.get_model_bpd_fn(config, sde, model)
    if plan.enable_sampling:
      self.draw = _get_sampler(config, experiment, mesh)


def _sample_batch(config) -> int:
  num_samples = config_checks.positive_int(config, 'eval.num_samples')
  return _batch_for(num_samples, config_checks.positive_int(config, 'eval.batch_size'))


def _get_sampler(config, experiment, mesh):
  """Jitted draw of a global batch of samples (see `_sample_batch`), split over the mesh."""
  return sampling.get_model_sampler(config, experiment.sde, experiment.model,
                                    (_sample_batch(config), *datasets.data_shape(config)),
                                    sharding=parallel.batch_sharded(mesh))


def _eval_loss(config, plan: _Plan, example_losses, state, mesh) -> dict:
  """Mean per-example EMA loss over the whole test split (2-D data: eval.num_samples points)."""
  scaler = datasets.get_data_scaler(config)
  num = plan.num_samples if plan.toy else datasets.num_examples(config, 'test')
  batch = _batch_for(num, plan.batch_size)
  batches = datasets.get_dataset(config, 'test', batch // jax.process_count(), evaluation=True,
                                 max_examples=plan.num_samples if plan.toy else None)
  key = jax.random.PRNGKey(config_checks.get(config, 'seed') + 4)
  labelled = train_lib.needs_labels(config, 'test')
  total, count = 0.0, 0
  for k, data in enumerate(batches):
    values = example_losses(state, jax.random.fold_in(key, k),
                            parallel.global_batch(mesh, scaler(data['x'])),
                            parallel.global_batch(mesh, train_lib.batch_labels(data, labelled)))
    mask = parallel.to_host(parallel.global_batch(mesh, data['mask']))
    total += float(np.sum(parallel.to_host(values)[mask], dtype=np.float64))
    count += int(mask.sum())
  return {'test_loss': total / count, 'test_loss_num_examples': count}


def _bits_per_dim(config, plan: _Plan, bpd_fn, state, mesh, out: str) -> dict:
  """Bits/dim of every example of the split (or its first eval.bpd_num_samples) through the
  probability-flow ODE, eval.bpd_num_repeats passes with fresh dequantization noise and probes;
  the mean over all values and its standard error."""
  num = datasets.num_examples(config, plan.bpd_split)  # None for toy data (then capped)
  if plan.bpd_max_examples is not None:
    num = plan.bpd_max_examples if num is None else min(num, plan.bpd_max_examples)
  batch = _batch_for(num, plan.batch_size)
  key = jax.random.PRNGKey(config_checks.get(config, 'seed') + 5)
  variables = {'params': state.params_ema}

  def one_pass(repeat):
    start, values, nfes = time.perf_counter(), [], []
    batches = datasets.get_dataset(config, plan.bpd_split, batch // jax.process_count(),
                                   evaluation=True, max_examples=plan.bpd_max_examples)
    for k, data in enumerate(batches):
      batch_key = jax.random.fold_in(jax.random.fold_in(key, repeat), k)
      bpd, _, nfe = bpd_fn(variables, batch_key, parallel.global_batch(mesh, data['x']))
      mask = parallel.to_host(parallel.global_batch(mesh, data['mask']))
      values.append(parallel.to_host(bpd)[mask])
      nfes.append(np.broadcast_to(parallel.to_host(nfe), mask.shape)[mask])
    return {'bpd': np.concatenate(values), 'nfe': np.concatenate(nfes),
            'seconds': np.float64(time.perf_counter() - start)}

  passes = [_npz_once(os.path.join(out, f'bpd_repeat_{r}.npz'), lambda r=r: one_pass(r))
            for r in range(plan.bpd_repeats)]
  values = np.concatenate([p['bpd'] for p in passes])
  return {'bpd': float(values.mean()),
          'bpd_standard_error': float(values.std(ddof=1) / np.sqrt(len(values))),
          'bpd_num_values': len(values), 'bpd_split': plan.bpd_split,
          'bpd_nfe': float(np.mean(np.concatenate([p['nfe'] for p in passes]))),
          'bpd_seconds': float(sum(p['seconds'] for p in passes))}


def _to_file_format(samples: np.ndarray, toy: bool) -> np.ndarray:
  """Samples in data units -> stored form: float32 points, or uint8 images (rounded, clipped)."""
  if toy:
    return samples.astype(np.float32)
  return np.clip(np.round(samples * 255.0), 0, 255).astype(np.uint8)


def _draw_samples(config, draw, state, out: str, features_of) -> dict:
  """eval.num_samples samples of `draw` (`_get_sampler`), and their Inception features if
  `features_of`, in batches saved once each in out/samples/. Sample k is the same whatever the
  batch size. Returns {'samples' (uint8 images or float32 points), 'nfe' (per sample), 'pool_3'
  and 'logits' with features, 'seconds'}."""
  num_samples = config_checks.positive_int(config, 'eval.num_samples')
  batch = _sample_batch(config)
  toy = datasets.is_toy(config)
  inverse_scaler = datasets.get_data_inverse_scaler(config)
  key = jax.random.PRNGKey(config_checks.get(config, 'seed') + 3)
  variables = {'params': state.params_ema}
  folder = os.path.join(out, 'samples')
  if parallel.is_primary():
    os.makedirs(folder, exist_ok=True)

  def one_batch(first):
    start = time.perf_counter()
    samples, nfe = draw(variables, key, first)
    samples = inverse_scaler(samples)
    arrays = {'samples': _to_file_format(parallel.to_host(samples), toy),
              'nfe': np.broadcast_to(parallel.to_host(nfe), (batch,)).astype(np.int64)}
    if features_of is not None:  # the features of the stored 8-bit images
      arrays.update(parallel.to_host(features_of(jnp.round(jnp.clip(samples, 0, 1) * 255) / 255)))
    arrays['seconds'] = np.float64(time.perf_counter() - start)
    return arrays

  parts = [_npz_once(os.path.join(folder, f'batch_{i:05d}.npz'), lambda f=first: one_batch(f))
           for i, first in enumerate(range(0, num_samples, batch))]
  merged = {name: np.concatenate([p[name] for p in parts])[:num_samples]
            for name in parts[0] if name != 'seconds'}
  merged['seconds'] = float(sum(p['seconds'] for p in parts))
  return merged


def _sample_quality(plan: _Plan, drawn: dict) -> dict:
  """FID and KID against eval.fid_stats and the Inception score, of the samples' features."""
  report = {}
  if 'logits' in drawn:
    report['inception_score'], report['inception_score_std'] = evaluation.inception_score(
        drawn['logits'], num_splits=min(IS_SPLITS, len(drawn['logits'])))
  if plan.fid_stats:
    reference = evaluation.load_reference_statistics(plan.fid_stats)
    mu, sigma = evaluation.feature_statistics(drawn['pool_3'])
    report['fid'] = evaluation.frechet_distance(mu, sigma, reference['mu'], reference['sigma'])
    report['kid'], report['kid_std'] = evaluation.kernel_inception_distance(
        drawn['pool_3'], reference['pool_3'])
    report['fid_stats'] = plan.fid_stats
  return report


def _digits_sample_quality(config, samples: np.ndarray) -> dict:
  """FD-digits of the samples (uint8) against the test split, beside that of as many train
  images; for class-conditional models, the fraction of samples the digits classifier reads
  as the class they were drawn for (sample k: class k mod num_classes)."""
  metric = digits_features.DigitsMetric(image_size=config.data.image_size)
  images = samples.astype(np.float32) / 255.0
  train_images = digits_features.split_images('train', config.data.image_size)[0][:len(images)]
  report = {'fd_digits': metric.frechet_distance(images),
            'fd_digits_train_vs_test': metric.frechet_distance(train_images)}
  num_classes = models_lib.num_data_classes(config)
  if num_classes is not None:
    report['digit_accuracy'] = metric.accuracy(images, np.arange(len(images)) % num_classes)
  return report


def _toy_sample_quality(config, samples: np.ndarray, out: str) -> dict:
  """Energy distance of the samples to test data, next to that between two data draws."""
  seed, split = config_checks.get(config, 'seed'), datasets.SPLITS.index('test')
  test_data = datasets.sample_toy(config.data.dataset, len(samples), (seed, split, 0))
  reference = datasets.sample_toy(config.data.dataset, len(samples), (seed, split, 1))
  report = {'energy_distance': evaluation.energy_distance(samples, test_data),
            'energy_distance_data_vs_data': evaluation.energy_distance(reference, test_data)}
  report['energy_distance_ratio'] = (report['energy_distance'] /
                                     report['energy_distance_data_vs_data'])
  picture = os.path.join(out, 'samples_vs_data.png')
  if parallel.is_primary():
    plots.save_scatter(picture, {'data (test split)': test_data, 'samples': samples})
  report['picture'] = picture
  return report


def _evaluate_step(config, plan, programs, state, step, mesh, out, features_of) -> dict:
  report = {'step': step}
  if plan.enable_loss:
    report.update(_json_once(os.path.join(out, 'loss.json'), lambda: _eval_loss(
        config, plan, programs.example_losses, state, mesh)))
  if plan.enable_bpd:
    report.update(_bits_per_dim(config, plan, programs.bpd_fn, state, mesh, out))
  if plan.enable_sampling:
    drawn = _draw_samples(config, programs.draw, state, out, features_of)
    samples = drawn['samples']
    report.update({'num_samples': len(samples), 'nfe': float(drawn['nfe'].mean()),
                   'nfe_max': int(drawn['nfe'].max()), 'sampling_seconds': drawn['seconds']})
    _write_once(os.path.join(out, 'samples.npz'),
                lambda path: _save_npz(path, {'samples': samples}))
    if plan.toy:
      report.update(_toy_sample_quality(config, samples, out))
    else:
      if parallel.is_primary():
        report['picture'] = plots.save_image_grid(os.path.join(out, 'samples.png'),
                                                  samples[:64].astype(np.float32) / 255.0)
      report.update(_sample_quality(plan, drawn))
      if config.data.dataset == 'digits':
        report.update(_digits_sample_quality(config, samples))
  report['report'] = os.path.join(out, 'report.json')
  return report


def evaluate(config, workdir_path: str, eval_folder: str = 'eval',
             watch_timeout: float = 0.0) -> list:
  """Evaluates checkpoints eval.begin_ckpt..end_ckpt of the run in `workdir_path` (see the module
  docstring); returns their reports, in order. FileNotFoundError if none of them exists."""
  plan = _Plan(config)
  experiment = train_lib.build_experiment(config)
  workdir.check_or_record_config(config, workdir_path, has_checkpoints=True)
  store = checkpoints.CheckpointStore(os.path.join(workdir_path, checkpoints.KEPT_DIRECTORY))
  if watch_timeout <= 0 and not set(plan.steps) & set(store.steps()):
    raise FileNotFoundError(f'None of checkpoints {plan.steps} (eval.begin_ckpt..end_ckpt times '
                            f'training.snapshot_freq) is in {store.directory}; it holds steps '
                            f'{store.steps()}.')
  folder = os.path.join(workdir_path, eval_folder)
  _check_or_record_eval_config(config, folder)
  mesh = parallel.data_mesh()
  features_of = None
  if plan.inception_weights:
    features_of = inception.get_inception_fn(inception.load_inception(plan.inception_weights))
  like = parallel.replicate(mesh, experiment.initial_state)
  programs = _Programs(config, plan, experiment, mesh)
  reports = []
  for step in _available_steps(store, plan.steps, watch_timeout):
    out = os.path.join(folder, f'step_{step}')
    report_path = os.path.join(out, 'report.json')
    if os.path.exists(report_path):
      with open(report_path) as f:
        report = json.load(f)
      print(f'Step {step} was evaluated before ({report_path}):')
    else:
      if parallel.is_primary():
        os.makedirs(out, exist_ok=True)
      state, _ = store.restore(step, like)
      report = _json_once(report_path, lambda: _evaluate_step(
          config, plan, programs, state, step, mesh, out, features_of))
      if parallel.is_primary():
        with open(os.path.join(folder, 'reports.jsonl'), 'a') as f:
          f.write(json.dumps(report) + '\n')
    print(json.dumps(report, indent=2))
    reports.append(report)
  store.close()
  if not reports:
    raise FileNotFoundError(f'No checkpoint of {plan.steps} appeared in {store.directory}.')
  return reports


def sample(config, workdir_path: str, eval_folder: str = 'eval') -> str:
  """Draws eval.num_samples samples from the latest checkpoint into a new directory
  workdir/<eval_folder>/step_<k> (or step_<k>_2, ...): samples.npz, a picture and sampling.json
  (NFE, wall time). Returns the directory."""
  config_checks.positive_int(config, 'eval.num_samples')
  parallel.per_process_batch(config_checks.positive_int(config, 'eval.batch_size'),
                             'eval.batch_size')
  toy = datasets.is_toy(config)
  experiment = train_lib.build_experiment(config)
  store = checkpoints.CheckpointStore(os.path.join(workdir_path, checkpoints.KEPT_DIRECTORY))
  step = store.latest_step()
  if step is None:
    raise FileNotFoundError(f'No checkpoint in {store.directory}; train first with --mode train.')
  workdir.check_or_record_config(config, workdir_path, has_checkpoints=True)
  mesh = parallel.data_mesh()
  state, _ = store.restore(step, parallel.replicate(mesh, experiment.initial_state))
  store.close()
  out = workdir.fresh_directory(os.path.join(workdir_path, eval_folder, f'step_{step}'))
  drawn = _draw_samples(config, _get_sampler(config, experiment, mesh), state, out, None)
  samples = drawn['samples']
  if parallel.is_primary():
    np.savez(os.path.join(out, 'samples.npz'), samples=samples)
    if toy:
      plots.save_scatter(os.path.join(out, 'samples.png'), {'samples': samples})
    else:
      plots.save_image_grid(os.path.join(out, 'samples.png'),
                            samples[:64].astype(np.float32) / 255.0)
    with open(os.path.join(out, 'sampling.json'), 'w') as f:
      json.dump({'step': step, 'num_samples': len(samples), 'nfe': float(drawn['nfe'].mean()),
                 'nfe_max': int(drawn['nfe'].max()), 'seconds': drawn['seconds'],
                 'sampling': config.sampling.to_dict()}, f, indent=2)
  print(f'Wrote {len(samples)} samples of step {step} to {out}')
  return out
