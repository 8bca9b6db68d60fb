"""The fields of the consistency methods (training.method 'cd', 'ct', 'ict'), set by the
configs/fewstep configs; every one None means its method's paper value (consistency_runs.py)."""
import ml_collections
from ml_collections.config_dict import placeholder


def add_consistency_fields(config, method: str) -> None:
  """Makes config train a consistency model by `method`: the student's parameterisation, the
  one-step consistency sampler and the section `consistency` of placeholders."""
  config.training.method = method
  config.training.teacher = placeholder(str)  # 'cd': the workdir of the score run to distil
  config.model.preconditioning = 'consistency'
  config.sampling.method = 'consistency'
  config.consistency = section = ml_collections.ConfigDict()
  for name in ('num_levels', 'curriculum_start', 'curriculum_end'):
    section[name] = placeholder(int)
  for name in ('level_sampling', 'distance', 'weighting', 'teacher_solver', 'lpips_weights'):
    section[name] = placeholder(str)
  for name in ('target_ema_rate', 'sigma_min', 'sigma_max', 'rho', 'p_mean', 'p_std'):
    section[name] = placeholder(float)
