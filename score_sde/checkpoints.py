"""Training checkpoints on orbax's CheckpointManager.

A checkpoint directory holds one sub-directory per saved step; each holds the TrainState pytree
('state') and the training data iterator's state ('data', JSON). Saves are atomic: a crash during
a save never leaves a half-written step that `restore` would pick up.
"""
import os
from typing import Optional

import jax
import orbax.checkpoint as ocp


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
    """(state, data_state) of step `step`; `like_state` gives the pytree structure and dtypes."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                      data=ocp.args.JsonRestore()))
    return restored['state'], restored['data']

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
