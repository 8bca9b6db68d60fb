"""Evaluation of a training run's checkpoints, and sampling: `evaluate(config, workdir,
eval_folder)` (--mode eval) and `sample(config, workdir, eval_folder)` (--mode sample).

`evaluate` takes checkpoints eval.begin_ckpt..eval.end_ckpt, in the official numbering: checkpoint
k is step k * training.snapshot_freq of workdir/checkpoints. For each that exists (optionally
waiting for training to write the others), the evaluator of the run's training method
(methods.Method.evaluator) writes its files and report.json to workdir/<eval_folder>/step_<step>/,
and the report is appended to workdir/<eval_folder>/reports.jsonl. Each file
is written once, atomically, and reused when the evaluation is restarted, so a preempted
evaluation resumes where it stopped and nothing is overwritten. Work is split over every device of
every process as in training; only process 0 writes.
"""
import json
import os
import time

import numpy as np

from score_sde import checkpoints, config_checks, eval_files, methods, parallel, plots, workdir

POLL_SECONDS = 5.0
# Fields that change what an eval folder holds; resuming into a folder with others is refused.
EVAL_SECTIONS = ('seed', 'sampling', 'likelihood', 'eval', 'data')
RANGE_FIELDS = ('begin_ckpt', 'end_ckpt')


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




def _checkpoint_steps(config) -> list:
  """Steps of checkpoints eval.begin_ckpt..end_ckpt (checkpoint k is step k snapshot_freq)."""
  snapshot_freq = config_checks.positive_int(config, 'training.snapshot_freq')
  begin = config_checks.positive_int(config, 'eval.begin_ckpt')
  end = config_checks.positive_int(config, 'eval.end_ckpt')
  if end < begin:
    raise ValueError(f'eval.end_ckpt = {end} must be >= eval.begin_ckpt = {begin}.')
  return [k * snapshot_freq for k in range(begin, end + 1)]


def evaluate(config, workdir_path: str, eval_folder: str = 'eval',
             watch_timeout: float = 0.0) -> list:
  """Evaluates checkpoints eval.begin_ckpt..end_ckpt of the run in `workdir_path` (see the module
  docstring); returns their reports, in order. FileNotFoundError if none of them exists."""
  steps = _checkpoint_steps(config)
  config = methods.resolve_config(config, workdir_path)
  mesh = parallel.data_mesh()
  method = methods.get_method(config)
  report_of = method.evaluator(mesh)
  like = parallel.replicate(mesh, method.initial_state)
  workdir.check_or_record_config(config, workdir_path, has_checkpoints=True)
  store = checkpoints.CheckpointStore(os.path.join(workdir_path, checkpoints.KEPT_DIRECTORY))
  if watch_timeout <= 0 and not set(steps) & set(store.steps()):
    raise FileNotFoundError(f'None of checkpoints {steps} (eval.begin_ckpt..end_ckpt times '
                            f'training.snapshot_freq) is in {store.directory}; it holds steps '
                            f'{store.steps()}.')
  folder = os.path.join(workdir_path, eval_folder)
  _check_or_record_eval_config(config, folder)
  reports = []
  for step in _available_steps(store, steps, watch_timeout):
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
      report = eval_files.json_once(report_path, lambda: report_of(state, step, out))
      if parallel.is_primary():
        with open(os.path.join(folder, 'reports.jsonl'), 'a') as f:
          f.write(json.dumps(report) + '\n')
    print(json.dumps(report, indent=2))
    reports.append(report)
  store.close()
  if not reports:
    raise FileNotFoundError(f'No checkpoint of {steps} appeared in {store.directory}.')
  return reports


def sample(config, workdir_path: str, eval_folder: str = 'eval') -> str:
  """Draws eval.num_samples samples from the latest checkpoint into a new directory
  workdir/<eval_folder>/step_<k> (or step_<k>_2, ...): samples.npz, a picture and sampling.json
  (NFE, wall time); a latent run's samples are decoded. Returns the directory."""
  store = checkpoints.CheckpointStore(os.path.join(workdir_path, checkpoints.KEPT_DIRECTORY))
  step = store.latest_step()
  if step is None:
    raise FileNotFoundError(f'No checkpoint in {store.directory}; train first with --mode train.')
  config = methods.resolve_config(config, workdir_path)
  method = methods.get_method(config)
  if method.draw_samples is None:
    raise ValueError(f'--mode sample draws from generative models; training.method = '
                     f'{methods.method_name(config)!r} runs have no samples (--mode eval '
                     'reports on them).')
  config_checks.positive_int(config, 'eval.num_samples')
  parallel.per_process_batch(config_checks.positive_int(config, 'eval.batch_size'),
                             'eval.batch_size')
  workdir.check_or_record_config(config, workdir_path, has_checkpoints=True)
  mesh = parallel.data_mesh()
  state, _ = store.restore(step, parallel.replicate(mesh, method.initial_state))
  store.close()
  out = workdir.fresh_directory(os.path.join(workdir_path, eval_folder, f'step_{step}'))
  drawn = method.draw_samples(mesh, state, out)
  samples = drawn['samples']
  if parallel.is_primary():
    np.savez(os.path.join(out, 'samples.npz'), samples=samples)
    if samples.ndim == 2:  # points of 2-D data
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
