"""Sampler sweeps: run a grid of samplers (method x steps / NFE x snr x guidance scale x ...) on one
score and tabulate NFE, wall time and sample quality.

    points = sweep.grid(method=['dpm_solver', 'edm'], nfe=[10, 20, 50])
    rows = sweep.run(points, sde, score_fn, (10_000, 2), key=key,
                     quality=sweep.exact_sample_quality(exact_samples))
    print(sweep.format_table(rows))

Every point samples from the same prior draws and noise streams (sample k uses fold_in(key, k)),
so differences between rows are the samplers', not the seeds'. Quality: for an analytic score,
the unbiased energy distance to exact samples or the sliced Wasserstein distance to the known
density; for images, FID / KID when the Inception weights
are present and a pixel-space energy distance (a cheap proxy) otherwise; for the bundled digits,
FD-digits and the accuracy of class-conditional samples (`digits_quality`).
"""
import dataclasses
import itertools
import statistics
import time

import jax
import ml_collections
import numpy as np

from score_sde import digits_features, evaluation, inception
from score_sde import sampling
from score_sde.sampling import ode as ode_lib

METHODS = sampling.SAMPLING_METHODS


def grid(**axes) -> list:
  """The Cartesian product of the axes as a list of dicts, e.g. grid(method=['ddim'],
  steps=[10, 20]) -> [{'method': 'ddim', 'steps': 10}, {'method': 'ddim', 'steps': 20}]."""
  names = list(axes)
  values = [v if isinstance(v, (list, tuple)) else [v] for v in axes.values()]
  return [dict(zip(names, combination)) for combination in itertools.product(*values)]


def build_sampler(sde, method: str, *, continuous: bool = True, eps: float = 1e-3,
                  steps=None, nfe=None, **options):
  """A sampler from keywords. 'pc': steps (N; default the SDE's), predictor, corrector, snr,
  n_steps_each, ...; 'ode': solver, rtol, atol (or steps for 'euler' / 'heun'), noise_removal;
  'ddim' | 'dpm_solver' | 'edm': steps or nfe and their options (eta, variant, schedule, rho,
  s_churn, ...); 'ddim_diffusers': steps and its options (eta, timestep_spacing, ...),
  continuous=False; 'consistency': levels, sigma_min.
  Unknown options raise TypeError."""
  if method == 'pc':
    if nfe is not None:
      raise ValueError("method 'pc' takes steps (its N), not an nfe budget.")
    if steps is not None:
      sde = dataclasses.replace(sde, N=steps)
    return sampling.get_pc_sampler(sde, eps=eps, **options)
  if method == 'ode':
    solver_fields = {k: options.pop(k) for k in ('solver', 'rtol', 'atol') if k in options}
    fixed = solver_fields.get('solver') in ('euler', 'heun')
    if nfe is not None or (steps is not None and not fixed):
      raise ValueError("method 'ode' takes steps only with solver 'euler' or 'heun' (their "
                       'equal steps); the adaptive solvers take rtol / atol, not steps or nfe.')
    if steps is not None:
      solver_fields['num_steps'] = steps
    return sampling.get_ode_sampler(sde, ode_lib.ODESolver(**solver_fields), eps=eps,
                                    continuous=continuous, **options)
  if method == 'ddim_diffusers':  # diffusers' timesteps end where they end: no eps
    if continuous or nfe is not None:
      raise ValueError("method 'ddim_diffusers' runs a discrete model (continuous=False) for "
                       "`steps` (diffusers' num_inference_steps), not an nfe budget.")
    return sampling.get_ddim_diffusers_sampler(sde, num_steps=steps, **options)
  if method == 'consistency':
    if steps is not None or nfe is not None:
      raise ValueError("method 'consistency' takes levels (one step after the first per level), "
                       'not steps or nfe.')
    return sampling.get_consistency_sampler(sde, **options)
  builders = {'ddim': sampling.get_ddim_sampler, 'dpm_solver': sampling.get_dpm_solver_sampler,
              'edm': sampling.get_edm_sampler}
  if method not in builders:
    raise ValueError(f'Unknown sampling method {method!r}; allowed: {list(METHODS)}.')
  return builders[method](sde, num_steps=steps, nfe=nfe, eps=eps, continuous=continuous,
                          **options)


def run(points, sde, score, shape, *, key, quality=None, continuous: bool = True,
        repeats: int = 3) -> list:
  """Samples `shape` (B, ...) with each point of `points` (dicts of build_sampler keywords, plus
  an optional 'guidance_scale') and returns one row per point: the point, 'nfe' (mean per
  sample), 'seconds' (median wall time of `repeats` runs after compilation) and the figures of
  quality(samples) -> dict. `score` is a score_fn(x, t), or, when points carry
  'guidance_scale', a function guidance_scale -> score_fn (e.g. built with
  sampling.guidance.guided_score_fn)."""
  rows = []
  for point in points:
    options = dict(point)
    scale = options.pop('guidance_scale', None)
    score_fn = score(scale) if 'guidance_scale' in point else score
    sample = build_sampler(sde, continuous=continuous, **options)
    draw = jax.jit(lambda k, sample=sample, score_fn=score_fn: sample(k, score_fn, shape))
    samples, nfe = jax.block_until_ready(draw(key))  # compiles
    seconds = []
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(draw(key))
      seconds.append(time.perf_counter() - start)
    row = {**point, 'nfe': float(np.mean(nfe)), 'seconds': statistics.median(seconds)}
    if quality is not None:
      row.update(quality(np.asarray(samples)))
    rows.append(row)
  return rows


def exact_sample_quality(exact_samples):
  """quality(samples) -> {'energy_distance'}: the unbiased squared energy distance to exact
  samples of the target (0 in expectation for a perfect sampler)."""
  exact_samples = np.asarray(exact_samples)
  return lambda samples: {'energy_distance': evaluation.energy_distance(
      samples, exact_samples, unbiased=True)}


def known_density_quality(mixture, num_projections: int = 64):
  """quality(samples) -> {'sliced_w1'}: the sliced 1-Wasserstein distance of the samples to a
  known GaussianMixture density (GaussianMixture.sliced_wasserstein)."""
  return lambda samples: {'sliced_w1': mixture.sliced_wasserstein(samples, num_projections)}


def image_quality(reference_images, config=None):
  """quality(samples) -> figures for images (B, H, W, C) in [0, 1] against reference images:
  {'fid', 'kid'} from Inception pool features when the FID Inception weights are found
  (config.eval.inception_weights or $SCORE_SDE_INCEPTION_WEIGHTS), else
  {'pixel_energy_distance'}, a cheap proxy with no network."""
  reference_images = np.asarray(reference_images)
  if config is None:  # the environment variable decides
    config = ml_collections.ConfigDict({'eval': {'inception_weights': None}})
  try:
    params = inception.load_inception(inception.inception_weights_path(config))
  except FileNotFoundError:
    return lambda samples: {'pixel_energy_distance': evaluation.energy_distance(
        samples, reference_images, unbiased=True)}
  features_of = inception.get_inception_fn(params)
  reference = np.asarray(features_of(reference_images)['pool_3'], np.float64)
  stats = evaluation.feature_statistics(reference)

  def quality(samples):
    features = np.asarray(features_of(samples)['pool_3'], np.float64)
    return {'fid': evaluation.frechet_distance(*evaluation.feature_statistics(features), *stats),
            'kid': evaluation.kernel_inception_distance(
                features, reference, subset_size=min(1000, len(features), len(reference)))[0]}

  return quality


def digits_quality(image_size: int = 8, num_classes=None):
  """quality(samples) -> {'fd_digits'} for digit images (B, H, W, 1) in [0, 1], H = W =
  image_size: FD-digits against the test split (digits_features.py); with `num_classes`, also
  'digit_accuracy', the fraction of samples read as class k mod num_classes (sample k's class
  in the framework's class-conditional draws)."""
  metric = digits_features.DigitsMetric(image_size=image_size)

  def quality(samples):
    report = {'fd_digits': metric.frechet_distance(samples)}
    if num_classes is not None:
      report['digit_accuracy'] = metric.accuracy(samples, np.arange(len(samples)) % num_classes)
    return report

  return quality


def format_table(rows, columns=None, digits: int = 4) -> str:
  """rows (list of dicts) as a Markdown table; columns default to every key, in order seen."""
  if columns is None:
    columns = list(dict.fromkeys(key for row in rows for key in row))

  def cell(value):
    if isinstance(value, float):
      return f'{value:.{digits}g}'
    return '' if value is None else str(value)

  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(cell(row.get(c)) for c in columns) + ' |' for row in rows]
  return '\n'.join(lines)
