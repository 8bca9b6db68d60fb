"""Output files of evaluations, each written once, atomically, by process 0, and reused when an
evaluation is restarted: a preempted evaluation resumes where it stopped and nothing is
overwritten."""
import json
import os

import jax
import numpy as np

from score_sde import parallel


def write_once(path: str, write) -> None:
  """write(temporary path) then rename to `path` (process 0 only); never replaces a file."""
  if parallel.is_primary() and not os.path.exists(path):
    temporary = f'{path}.partial'
    write(temporary)
    os.replace(temporary, path)


def json_once(path: str, compute) -> dict:
  """The record in `path`, or compute() written there."""
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  record = compute()

  def write(temporary):
    with open(temporary, 'w') as f:
      json.dump(record, f, indent=2)

  write_once(path, write)
  return record


def save_npz(path: str, arrays: dict) -> None:
  with open(path, 'wb') as f:
    np.savez(f, **arrays)


def npz_once(path: str, compute) -> dict:
  """The arrays in `path`, or compute() (a dict of arrays) written there."""
  if os.path.exists(path):
    with np.load(path) as arrays:
      return {k: arrays[k] for k in arrays.files}
  arrays = compute()
  write_once(path, lambda temporary: save_npz(temporary, arrays))
  return arrays


def batch_for(num: int, batch_size: int) -> int:
  """A global batch no larger than needed for `num` examples, divisible by the device count."""
  devices = jax.device_count()
  return min(batch_size, -(-num // devices) * devices)
