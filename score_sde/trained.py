"""A trained run, loaded from its workdir for notebooks and sweeps.

    run = trained.load('runs/vp')
    rows = sweep.run(points, run.sde, run.score_fn(), (10_000, *run.data_shape), key=key,
                     continuous=run.continuous)
    samples = run.to_data(model_space_samples)

The config is the run's own workdir/config.json (the one it was trained with); the parameters are
the EMA weights of its newest checkpoint, kept or preemption, as the samplers of --mode eval use.
Nothing in the workdir is written or moved.
"""
import dataclasses
import json
import os
from typing import Callable, Optional

import jax.numpy as jnp
import ml_collections

from score_sde import checkpoints, datasets
from score_sde import models as models_lib
from score_sde import sde as sde_lib
from score_sde import train as train_lib
from score_sde.sampling import guidance


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  """config: the run's config; sde; model and variables ({'params': EMA weights}); step: the
  checkpoint's training step; data_shape: one example's shape; continuous: the training's time
  convention (pass it to the samplers)."""

  config: ml_collections.ConfigDict
  sde: sde_lib.SDE
  model: object
  variables: dict
  step: int
  data_shape: tuple
  continuous: bool

  @property
  def num_classes(self) -> Optional[int]:
    """Data classes of a class-conditional model, else None."""
    return models_lib.num_data_classes(self.config)

  def _model_score(self) -> Callable:
    return models_lib.get_score_fn(self.sde, self.model, self.variables,
                                   continuous=self.continuous)

  def score_fn(self, class_labels=None) -> Callable:
    """score_fn(x, t) of the EMA model; class_labels int (B,) condition a class-conditional
    model (None: its unconditional score)."""
    score = self._model_score()
    if class_labels is None:
      return lambda x, t: score(x, t)
    labels = jnp.asarray(class_labels, jnp.int32)
    return lambda x, t: score(x, t, class_labels=labels)

  def guided_score(self, class_labels) -> Callable:
    """guidance_scale -> score_fn(x, t) with classifier-free guidance towards class_labels int
    (B,), the `score` factory that sweep.run takes for points with a 'guidance_scale'."""
    if self.num_classes is None:
      raise ValueError('Guidance needs a class-conditional run (config field model.num_classes '
                       'set); this one is unconditional.')
    score, labels = self._model_score(), jnp.asarray(class_labels, jnp.int32)
    return lambda scale: guidance.guided_score_fn(score, labels, scale, self.num_classes)

  def to_data(self, samples):
    """Model-space samples -> data space (images back to [0, 1]; toy points unchanged)."""
    return datasets.get_data_inverse_scaler(self.config)(samples)


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """workdir/config.json as a ConfigDict; FileNotFoundError if the workdir has none."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: {workdir} is not the workdir of a run.')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def load(workdir: str, config: Optional[ml_collections.ConfigDict] = None) -> TrainedRun:
  """The newest checkpoint of the run in `workdir` (its EMA parameters), with the run's config
  (or `config`, e.g. with other sampling fields). FileNotFoundError if it has no checkpoint."""
  config = read_config(workdir) if config is None else config
  experiment = train_lib.build_experiment(config)
  stores = [checkpoints.CheckpointStore(os.path.join(workdir, directory))
            for directory in (checkpoints.KEPT_DIRECTORY, checkpoints.PREEMPTION_DIRECTORY)
            if os.path.isdir(os.path.join(workdir, directory))]
  candidates = [(store.latest_step(), store) for store in stores if store.steps()]
  if not candidates:
    raise FileNotFoundError(f'No checkpoint in {workdir}; train first with --mode train.')
  step, store = max(candidates, key=lambda candidate: candidate[0])
  state, _ = store.restore(step, experiment.initial_state)
  for each in stores:
    each.close()
  return TrainedRun(config=config, sde=experiment.sde, model=experiment.model,
                    variables={'params': state.params_ema}, step=int(step),
                    data_shape=tuple(experiment.data_shape),
                    continuous=bool(config.training.continuous))
