"""Evaluation of a score run's checkpoint (pixel or latent; --mode eval with training.method =
'score'), and the samples of --mode sample.

Into workdir/<eval_folder>/step_<step>/ the evaluation writes:

  loss.json             eval.enable_loss: mean EMA loss over the whole test split
  bpd_repeat_<r>.npz    eval.enable_bpd: bits/dim of every example of eval.bpd_dataset (or its first
                        eval.bpd_num_samples), pass r of eval.bpd_num_repeats
  samples/batch_<i>.npz eval.enable_sampling (always for 2-D data): eval.num_samples samples in
                        batches of eval.batch_size, with their Inception features for images
  samples.npz, samples.png (or samples_vs_data.png for 2-D data)
  report.json           everything above plus FID / KID / Inception score (images, with
                        eval.fid_stats) or the energy distance (2-D data); for the digits
                        FD-digits (digits_features.py) and, for conditional models, the fraction
                        of samples showing the requested digits

Each file is written once (eval_files.py) and reused when the evaluation is restarted.
"""
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from score_sde import config_checks, datasets, digits_features, eval_files, evaluation
from score_sde import inception, likelihood, parallel, plots, sampling
from score_sde import models as models_lib

IS_SPLITS = 10  # the Inception score's splits (Salimans et al. 2016)


class _Plan:
  """The validated evaluation settings of a config."""

  def __init__(self, config):
    self.batch_size = config_checks.positive_int(config, 'eval.batch_size')
    parallel.per_process_batch(self.batch_size, 'eval.batch_size')
    self.toy = datasets.is_toy(config)
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


class _Programs:
  """The jitted programs of an evaluation, compiled once for all its checkpoints: per-example
  losses, bits/dim, and a sampler of eval.batch_size samples (as far as the plan uses them);
  `to_data` maps the model's samples to data units (a latent run decodes them), `encode` test
  images in [0, 1] to what the likelihood sees (a latent run's latents; else None)."""

  def __init__(self, config, plan: _Plan, batch_arrays, eval_losses, experiment, space, conds,
               mesh):
    sde, model = experiment.sde, experiment.model
    self.batch_arrays = batch_arrays
    self.conds = conds
    self.example_losses = jax.jit(eval_losses)
    self.to_data = _to_data(config, space)
    self.encode = None
    if space is not None:
      self.encode = jax.jit(lambda images, key: space.encode(2.0 * images - 1.0, key))
    if plan.enable_bpd:
      self.bpd_fn = likelihood.get_model_bpd_fn(config, sde, model, latent=space is not None)
    if plan.enable_sampling:
      self.draw = _get_sampler(config, experiment, mesh, self.conds)


def _to_data(config, space):
  """The model's samples -> data units: the inverse data scaler, or a latent run's decoder
  (jitted: the samples may be split over devices, the autoencoder's parameters on one)."""
  return datasets.get_data_inverse_scaler(config) if space is None else jax.jit(space.decode)


def _sample_batch(config) -> int:
  num_samples = config_checks.positive_int(config, 'eval.num_samples')
  return eval_files.batch_for(num_samples, config_checks.positive_int(config, 'eval.batch_size'))


def _get_sampler(config, experiment, mesh, conds=None):
  """Jitted draw of a global batch of samples (see `_sample_batch`), split over the mesh."""
  return sampling.get_model_sampler(config, experiment.sde, experiment.model,
                                    (_sample_batch(config), *experiment.data_shape),
                                    sharding=parallel.batch_sharded(mesh),
                                    null_condition=None if conds is None else conds.null)


def _eval_loss(config, plan: _Plan, programs: _Programs, state, mesh) -> dict:
  """Mean per-example EMA loss over the whole test split (2-D data: eval.num_samples points)."""
  num = plan.num_samples if plan.toy else datasets.num_examples(config, 'test')
  batch = eval_files.batch_for(num, plan.batch_size)
  batches = datasets.get_dataset(config, 'test', batch // jax.process_count(), evaluation=True,
                                 max_examples=plan.num_samples if plan.toy else None)
  key = jax.random.PRNGKey(config_checks.get(config, 'seed') + 4)
  total, count = 0.0, 0
  for k, data in enumerate(batches):
    values = programs.example_losses(
        state, jax.random.fold_in(key, k),
        parallel.global_batch(mesh, programs.batch_arrays(data)))
    mask = parallel.to_host(parallel.global_batch(mesh, data['mask']))
    total += float(np.sum(parallel.to_host(values)[mask], dtype=np.float64))
    count += int(mask.sum())
  return {'test_loss': total / count, 'test_loss_num_examples': count}


def _bits_per_dim(config, plan: _Plan, programs: _Programs, state, mesh, out: str) -> dict:
  """Bits/dim of every example of the split (or its first eval.bpd_num_samples) through the
  probability-flow ODE, eval.bpd_num_repeats passes with fresh dequantization noise and probes;
  the mean over all values and its standard error. A latent run's are the bits per latent
  dimension of the encoded images (reported as latent_bpd...), not comparable with pixels'."""
  num = datasets.num_examples(config, plan.bpd_split)  # None for toy data (then capped)
  if plan.bpd_max_examples is not None:
    num = plan.bpd_max_examples if num is None else min(num, plan.bpd_max_examples)
  batch = eval_files.batch_for(num, plan.batch_size)
  key = jax.random.PRNGKey(config_checks.get(config, 'seed') + 5)
  variables = {'params': state.params_ema}

  def one_pass(repeat):
    start, values, nfes = time.perf_counter(), [], []
    batches = datasets.get_dataset(config, plan.bpd_split, batch // jax.process_count(),
                                   evaluation=True, max_examples=plan.bpd_max_examples)
    for k, data in enumerate(batches):
      batch_key = jax.random.fold_in(jax.random.fold_in(key, repeat), k)
      x = parallel.global_batch(mesh, data['x'])
      if programs.encode is not None:
        batch_key, encode_key = jax.random.split(batch_key)
        x = programs.encode(x, encode_key)
      bpd, _, nfe = programs.bpd_fn(variables, batch_key, x)
      mask = parallel.to_host(parallel.global_batch(mesh, data['mask']))
      values.append(parallel.to_host(bpd)[mask])
      nfes.append(np.broadcast_to(parallel.to_host(nfe), mask.shape)[mask])
    return {'bpd': np.concatenate(values), 'nfe': np.concatenate(nfes),
            'seconds': np.float64(time.perf_counter() - start)}

  passes = [eval_files.npz_once(os.path.join(out, f'bpd_repeat_{r}.npz'), lambda r=r: one_pass(r))
            for r in range(plan.bpd_repeats)]
  values = np.concatenate([p['bpd'] for p in passes])
  report = {'bpd': float(values.mean()),
            'bpd_standard_error': float(values.std(ddof=1) / np.sqrt(len(values))),
            'bpd_num_values': len(values), 'bpd_split': plan.bpd_split,
            'bpd_nfe': float(np.mean(np.concatenate([p['nfe'] for p in passes]))),
            'bpd_seconds': float(sum(p['seconds'] for p in passes))}
  if programs.encode is not None:  # a latent run
    report = {f'latent_{name}': value for name, value in report.items()}
  return report


def _to_file_format(samples: np.ndarray, toy: bool) -> np.ndarray:
  """Samples in data units -> stored form: float32 points, or uint8 images (rounded, clipped)."""
  if toy:
    return samples.astype(np.float32)
  return np.clip(np.round(samples * 255.0), 0, 255).astype(np.uint8)


def sample_prompts(config, conds, num_samples: int):
  """What a caption-conditioned model's samples are drawn for: sample k gets the caption (and
  labels) of test example k, cycling through the test split. (captions (num_samples,), labels
  (num_samples, ...) or None); (None, None) for class-conditional and unconditional models."""
  if conds is None or conds.kind == 'class':
    return None, None
  batches = datasets.get_dataset(config, 'test', 256, evaluation=True,
                                 max_examples=num_samples)
  texts, labels = [], []
  for batch in batches:
    texts.append(batch['caption'][batch['mask']])
    if 'label' in batch:
      labels.append(batch['label'][batch['mask']])
  texts = np.concatenate(texts)
  cycle = np.arange(num_samples) % len(texts)
  return texts[cycle], np.concatenate(labels)[cycle] if labels else None


def _draw_samples(config, draw, to_data, state, out: str, features_of, conds=None) -> dict:
  """eval.num_samples samples of `draw` (`_get_sampler`), and their Inception features if
  `features_of`, in batches saved once each in out/samples/. Sample k is the same whatever the
  batch size; a caption model's is drawn for the caption of `sample_prompts`. Returns
  {'samples' (uint8 images or float32 points), 'nfe' (per sample), 'pool_3' and 'logits' with
  features, 'seconds'}."""
  num_samples = config_checks.positive_int(config, 'eval.num_samples')
  batch = _sample_batch(config)
  toy = datasets.is_toy(config)
  key = jax.random.PRNGKey(config_checks.get(config, 'seed') + 3)
  variables = {'params': state.params_ema}
  folder = os.path.join(out, 'samples')
  if parallel.is_primary():
    os.makedirs(folder, exist_ok=True)
  texts, _ = sample_prompts(config, conds, num_samples + batch)

  def one_batch(first):
    start = time.perf_counter()
    if texts is None:
      samples, nfe = draw(variables, key, first)
    else:
      samples, nfe = draw(variables, key, first, conds.encode(texts[first:first + batch]))
    samples = to_data(samples)
    arrays = {'samples': _to_file_format(parallel.to_host(samples), toy),
              'nfe': np.broadcast_to(parallel.to_host(nfe), (batch,)).astype(np.int64)}
    if features_of is not None:  # the features of the stored 8-bit images
      arrays.update(parallel.to_host(features_of(jnp.round(jnp.clip(samples, 0, 1) * 255) / 255)))
    arrays['seconds'] = np.float64(time.perf_counter() - start)
    return arrays

  parts = [eval_files.npz_once(os.path.join(folder, f'batch_{i:05d}.npz'),
                               lambda f=first: one_batch(f))
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


def _digits_sample_quality(config, samples: np.ndarray, conds=None) -> dict:
  """FD-digits of the samples (uint8) against the test split, beside that of as many train
  images; for class-conditional models, the fraction of samples the digits classifier reads
  as the class they were drawn for (sample k: class k mod num_classes), for 'digit_captions'
  models the digit their caption names."""
  metric = digits_features.DigitsMetric(image_size=config.data.image_size)
  images = samples.astype(np.float32) / 255.0
  train_images = digits_features.split_images('train', config.data.image_size)[0][:len(images)]
  report = {'fd_digits': metric.frechet_distance(images),
            'fd_digits_train_vs_test': metric.frechet_distance(train_images)}
  num_classes = models_lib.num_data_classes(config)
  if num_classes is not None:
    report['digit_accuracy'] = metric.accuracy(images, np.arange(len(images)) % num_classes)
  elif conds is not None:
    report['digit_accuracy'] = metric.accuracy(images, sample_prompts(config, conds,
                                                                      len(images))[1])
  return report


def _pairs_sample_quality(config, samples: np.ndarray, conds) -> dict:
  """For 'digit_pairs' samples (uint8 16 x 16), each half judged by the 8 x 8 digits
  classifier: FD-digits of the halves against the test digits (beside that of as many train
  digits), and for caption models the fraction of samples whose left and right digits are those
  their caption names (caption_accuracy) and of halves that are (digit_accuracy); chance is 0.01
  and 0.1."""
  metric = digits_features.DigitsMetric(image_size=8)
  halves = np.concatenate(split_pairs(samples.astype(np.float32) / 255.0))
  train_digits = digits_features.split_images('train', 8)[0][:len(halves)]
  report = {'fd_digits': metric.frechet_distance(halves),
            'fd_digits_train_vs_test': metric.frechet_distance(train_digits)}
  if conds is not None:
    left, right = split_pairs(samples.astype(np.float32) / 255.0)
    labels = sample_prompts(config, conds, len(samples))[1]
    read = [np.argmax(metric.logits_and_features(h)[0], axis=-1) for h in (left, right)]
    correct = np.stack([read[0] == labels[:, 0], read[1] == labels[:, 1]], axis=1)
    report['caption_accuracy'] = float(np.mean(correct.all(axis=1)))
    report['digit_accuracy'] = float(np.mean(correct))
  return report


def split_pairs(images: np.ndarray) -> tuple:
  """Canvases (N, 16, 16, C) of 'digit_pairs' -> their (left, right) digits, each (N, 8, 8, C)."""
  rows = images[:, 4:12]
  return rows[:, :, :8], rows[:, :, 8:]


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
    report.update(eval_files.json_once(os.path.join(out, 'loss.json'), lambda: _eval_loss(
        config, plan, programs, state, mesh)))
  if plan.enable_bpd:
    report.update(_bits_per_dim(config, plan, programs, state, mesh, out))
  if plan.enable_sampling:
    drawn = _draw_samples(config, programs.draw, programs.to_data, state, out, features_of,
                          programs.conds)
    samples = drawn['samples']
    report.update({'num_samples': len(samples), 'nfe': float(drawn['nfe'].mean()),
                   'nfe_max': int(drawn['nfe'].max()), 'sampling_seconds': drawn['seconds']})
    eval_files.write_once(os.path.join(out, 'samples.npz'),
                          lambda path: eval_files.save_npz(path, {'samples': samples}))
    if plan.toy:
      report.update(_toy_sample_quality(config, samples, out))
    else:
      if parallel.is_primary():
        report['picture'] = plots.save_image_grid(os.path.join(out, 'samples.png'),
                                                  samples[:64].astype(np.float32) / 255.0)
      report.update(_sample_quality(plan, drawn))
      if config.data.dataset in ('digits', 'digit_captions'):
        report.update(_digits_sample_quality(config, samples, programs.conds))
      elif config.data.dataset == 'digit_pairs':
        report.update(_pairs_sample_quality(config, samples, programs.conds))
  report['report'] = os.path.join(out, 'report.json')
  return report


class ScoreEvaluator:
  """The reports of a score run's checkpoints on `mesh`: `experiment` is its
  methods.Experiment, `space` its latent_runs.LatentSpace (None in pixel space), `conds` its
  conditions.Conditions (None if unconditional), `batch_arrays` and `eval_losses` its
  methods.Method's."""

  def __init__(self, config, mesh, batch_arrays, eval_losses, experiment, space, conds):
    self.config, self.mesh = config, mesh
    self.plan = _Plan(config)
    self.features_of = None
    if self.plan.inception_weights:
      self.features_of = inception.get_inception_fn(
          inception.load_inception(self.plan.inception_weights))
    self.programs = _Programs(config, self.plan, batch_arrays, eval_losses, experiment, space,
                             conds, mesh)

  def __call__(self, state, step: int, out: str) -> dict:
    """The report of the checkpoint `state` of `step`, its files written into `out`."""
    return _evaluate_step(self.config, self.plan, self.programs, state, step, self.mesh, out,
                          self.features_of)


def draw_samples(config, mesh, experiment, space, conds, state, out: str) -> dict:
  """eval.num_samples samples of the state's EMA model into out/samples/ (`_draw_samples`), in
  data units (a latent run's decoded): {'samples', 'nfe' (per sample), 'seconds'}."""
  return _draw_samples(config, _get_sampler(config, experiment, mesh, conds),
                       _to_data(config, space), state, out, None, conds)
