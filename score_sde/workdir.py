"""The layout of a run's working directory and the guards that keep its contents safe.

workdir/
  config.json        the config that created the run (checked on every restart)
  checkpoints/       orbax checkpoints, one per saved step
  metrics.jsonl, tensorboard/
  samples/step_<k>/  snapshot samples taken during training
  <eval_folder>/     outputs of --mode eval and --mode sample, never overwritten
"""
import json
import os

import ml_collections

# Fields that may differ when a run is resumed: run length, logging, sampling and evaluation, and
# the learning rate and EMA rate (both re-read from the config on resume).
RESUMABLE_FIELDS = ('training.n_iters', 'training.log_freq', 'training.eval_freq',
                    'training.snapshot_freq', 'training.snapshot_sampling',
                    'training.n_jitted_steps', 'optim.lr', 'model.ema_rate')
RESUMABLE_SECTIONS = ('sampling.', 'eval.', 'likelihood.')


def _flatten(tree: dict, prefix: str = '') -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def _defining_fields(config_dict: dict) -> dict:
  return {k: v for k, v in _flatten(config_dict).items()
          if k not in RESUMABLE_FIELDS and not k.startswith(RESUMABLE_SECTIONS)}


def changed_fields(old: dict, new: dict) -> list:
  """Dotted paths of the fields that differ between two nested dicts. An absent field equals None:
  an optional field added to a config later does not change its experiment."""
  old, new = _flatten(old), _flatten(new)
  return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def config_differences(old: dict, new: dict) -> list:
  """Fields (dotted paths) that define the experiment and differ between two config dicts."""
  return changed_fields(_defining_fields(old), _defining_fields(new))


def check_or_record_config(config: ml_collections.ConfigDict, workdir: str,
                           has_checkpoints: bool) -> None:
  """Writes workdir/config.json for a new run; for an existing run, refuses (ValueError) a config
  that differs in a field that defines the experiment, so checkpoints are never overwritten by an
  unrelated run."""
  path = os.path.join(workdir, 'config.json')
  new = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    differences = config_differences(old, new)
    if differences:
      shown = ', '.join(f'{k}: {_flatten(old).get(k, "<absent>")!r} -> '
                        f'{_flatten(new).get(k, "<absent>")!r}' for k in differences[:10])
      raise ValueError(f'Workdir {workdir} holds a run of a different config ({shown}). '
                       'Use a new --workdir; nothing was changed.')
    return
  if has_checkpoints:
    raise ValueError(f'Workdir {workdir} holds checkpoints but no config.json, so they cannot be '
                     'matched to this config. Use a new --workdir; nothing was changed.')
  os.makedirs(workdir, exist_ok=True)
  with open(path, 'w') as f:
    f.write(config.to_json_best_effort(indent=2))


def recorded_field(workdir: str, field: str):
  """The value of the dotted `field` in workdir/config.json, or None when the workdir has no
  config or the config has no such field."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return _flatten(json.load(f)).get(field)


def fresh_directory(path: str) -> str:
  """Creates and returns `path`, or `path_2`, `path_3`, ... if it exists: outputs never overwrite
  earlier ones."""
  candidate, n = path, 1
  while True:
    try:
      os.makedirs(candidate)
      return candidate
    except FileExistsError:
      n += 1
      candidate = f'{path}_{n}'


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """workdir/config.json as a ConfigDict; FileNotFoundError if the workdir has none."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: {workdir} is not the workdir of a run.')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))
