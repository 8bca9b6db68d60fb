"""Training checkpoints on orbax's CheckpointManager.

A run's workdir holds two checkpoint directories, each with one sub-directory per saved step:

  checkpoints/       every training.snapshot_freq steps, all kept (the ones evaluation reads)
  checkpoints-meta/  every training.snapshot_freq_for_preemption steps, only the newest kept

Each step holds the TrainState pytree ('state': parameters, EMA, optimizer state, step, RNG key)
and the training data iterator's state ('data', JSON). Saves are atomic: a crash during a save
leaves a temporary directory that is never taken for a checkpoint. A run resumes from the newest
step of either directory that can be read; an unreadable one is renamed `<step>.unreadable` (kept,
never deleted) with a warning, and the next newest is used.
"""
import os
import warnings
from typing import Optional

import jax
import orbax.checkpoint as ocp

KEPT_DIRECTORY = 'checkpoints'
PREEMPTION_DIRECTORY = 'checkpoints-meta'


class CheckpointStore:
  """Saves and restores (TrainState, data iterator state) pairs under `directory`.

  max_to_keep: how many of the newest steps to keep (None keeps all).
  """

  def __init__(self, directory: str, max_to_keep: Optional[int] = None):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def steps(self) -> list:
    """Saved steps, ascending."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state, data_state: dict) -> None:
    """Writes step `step` (asynchronously; `wait` blocks until it is on disk)."""
    self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     data=ocp.args.JsonSave(data_state)))

  def restore(self, step: int, like_state) -> tuple:
    """(state, data_state) of step `step`; `like_state` gives the pytree structure, dtypes and
    shardings."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                      data=ocp.args.JsonRestore()))
    return restored['state'], restored['data']

  def reload(self) -> None:
    """Re-reads the directory (for steps another process has written since)."""
    self._manager.reload()

  def set_aside(self, step: int) -> str:
    """Renames step `step` to `<step>.unreadable` (so the step can be written again) and
    forgets it; returns the new path."""
    self.wait()
    path = os.path.join(self.directory, str(step))
    target, n = f'{path}.unreadable', 1
    while os.path.exists(target):
      n += 1
      target = f'{path}.unreadable_{n}'
    if jax.process_index() == 0:
      os.rename(path, target)
    self._manager.reload()
    return target

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


class TrainingCheckpoints:
  """The kept and the preemption checkpoints of one workdir."""

  def __init__(self, workdir_path: str):
    self.kept = CheckpointStore(os.path.join(workdir_path, KEPT_DIRECTORY))
    self.preemption = CheckpointStore(os.path.join(workdir_path, PREEMPTION_DIRECTORY),
                                      max_to_keep=1)

  def any_saved(self) -> bool:
    return bool(self.kept.steps() or self.preemption.steps())

  def restore_latest(self, like_state) -> Optional[tuple]:
    """(state, data_state) of the newest readable step of either directory, or None if there is
    none. Unreadable steps are set aside with a warning."""
    candidates = sorted([(step, store) for store in (self.preemption, self.kept)
                         for step in store.steps()], key=lambda c: c[0], reverse=True)
    for step, store in candidates:
      try:
        return store.restore(step, like_state)
      except Exception as error:  # orbax raises many types for damaged files
        moved = store.set_aside(step)
        warnings.warn(f'Checkpoint step {step} of {store.directory} cannot be read '
                      f'({type(error).__name__}: {error}); moved it to {moved} and trying the '
                      'previous one.')
    return None

  def save(self, step: int, state, data_state: dict, *, kept: bool, preemption: bool) -> None:
    """Saves step `step` to the kept directory, the preemption directory, or both."""
    if kept:
      self.kept.save(step, state, data_state)
    if preemption:
      self.preemption.save(step, state, data_state)

  def close(self) -> None:
    for store in (self.kept, self.preemption):
      store.wait()
      store.close()


def restore_newest(workdir_path: str, like_state) -> Optional[tuple]:
  """(state, step) of the newest step of a workdir's kept or preemption checkpoints, for reading
  a finished run (nothing is written or moved); None if it has none."""
  stores = [CheckpointStore(os.path.join(workdir_path, directory))
            for directory in (KEPT_DIRECTORY, PREEMPTION_DIRECTORY)
            if os.path.isdir(os.path.join(workdir_path, directory))]
  candidates = [(store.latest_step(), store) for store in stores if store.steps()]
  restored = None
  if candidates:
    step, store = max(candidates, key=lambda candidate: candidate[0])
    restored = store.restore(step, like_state)[0], int(step)
  for store in stores:
    store.close()
  return restored
