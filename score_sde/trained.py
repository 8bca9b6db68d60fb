"""A trained run, loaded from its workdir for notebooks and sweeps.

    run = trained.load('runs/vp')
    rows = sweep.run(points, run.sde, run.score_fn(), (10_000, *run.data_shape), key=key,
                     continuous=run.continuous)
    samples = run.to_data(model_space_samples)

A latent run's data_shape is its latents', and to_data decodes them; a caption model's
conditions come from `run.conditions.encode(captions)`.

The config is the run's own workdir/config.json (the one it was trained with); the parameters are
the EMA weights of its newest checkpoint, kept or preemption, as the samplers of --mode eval use.
Nothing in the workdir is written or moved.
"""
import dataclasses
from typing import Callable, Optional

import jax.numpy as jnp
import ml_collections

from score_sde import checkpoints, datasets, latent_runs, methods
from score_sde import conditions as conditions_lib
from score_sde import flows
from score_sde import models as models_lib
from score_sde import sde as sde_lib
from score_sde import workdir as workdir_lib
from score_sde.sampling import guidance


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  """config: the run's config; sde; model and variables ({'params': EMA weights}); step: the
  checkpoint's training step; data_shape: one example's shape (a latent run's latent); continuous:
  the training's time convention (pass it to the samplers); space: a latent run's
  latent_runs.LatentSpace (else None); conditions: a conditional model's conditions.Conditions
  (else None)."""

  config: ml_collections.ConfigDict
  sde: sde_lib.SDE
  model: object
  variables: dict
  step: int
  data_shape: tuple
  continuous: bool
  space: Optional[latent_runs.LatentSpace] = None
  conditions: Optional[conditions_lib.Conditions] = None

  @property
  def num_classes(self) -> Optional[int]:
    """Data classes of a class-conditional model, else None."""
    return models_lib.num_data_classes(self.config)

  def _model_score(self) -> Callable:
    return models_lib.get_score_fn(self.sde, self.model, self.variables,
                                   continuous=self.continuous)

  def score_fn(self, class_labels=None) -> Callable:
    """score_fn(x, t) of the EMA model (a velocity model's carries its velocity, flows);
    class_labels (B, ...) condition a conditional model (class labels, or
    `conditions.encode(captions)`; None: its unconditional score)."""
    labels = None if class_labels is None else jnp.asarray(class_labels)
    return flows.transformed(self._model_score(),
                             lambda fn: lambda x, t: fn(x, t, class_labels=labels))

  def guided_score(self, class_labels) -> Callable:
    """guidance_scale -> score_fn(x, t) with classifier-free guidance towards the conditions
    class_labels (B, ...), the `score` factory that sweep.run takes for points with a
    'guidance_scale'."""
    if self.conditions is None:
      raise ValueError('Guidance needs a conditional run (config field model.num_classes or '
                       'model.conditioning set); this one is unconditional.')
    score, labels = self._model_score(), jnp.asarray(class_labels)
    return lambda scale: guidance.guided_score_fn(score, labels, scale, self.conditions.null)

  def to_data(self, samples):
    """Model-space samples -> data space (images in [0, 1]: a latent run decodes its latents;
    toy points unchanged)."""
    if self.space is not None:
      return self.space.decode(samples)
    return datasets.get_data_inverse_scaler(self.config)(samples)


def load(workdir: str, config: Optional[ml_collections.ConfigDict] = None) -> TrainedRun:
  """The newest checkpoint of the run in `workdir` (its EMA parameters), with the run's config
  (or `config`, e.g. with other sampling fields). FileNotFoundError if it has no checkpoint."""
  config = workdir_lib.read_config(workdir) if config is None else config
  space = latent_runs.load_latent_space(config) if latent_runs.is_latent_run(config) else None
  experiment = methods.build_experiment(config, None if space is None else space.latent_shape)
  restored = checkpoints.restore_newest(workdir, methods.checkpoint_template(config, experiment))
  if restored is None:
    raise FileNotFoundError(f'No checkpoint in {workdir}; train first with --mode train.')
  state, step = restored
  return TrainedRun(config=config, sde=experiment.sde, model=experiment.model,
                    variables={'params': state.params_ema}, step=step,
                    data_shape=tuple(experiment.data_shape),
                    continuous=bool(config.training.continuous), space=space,
                    conditions=conditions_lib.get_conditions(config))
