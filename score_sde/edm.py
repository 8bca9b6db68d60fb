"""EDM preconditioning and loss (Karras et al. 2022, "Elucidating the design space of
diffusion-based generative models", Table 1 and Eq. 2, 8).

A network F becomes a denoiser of data corrupted by Gaussian noise of std sigma,

  D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma)),
  c_skip = sd^2 / (sigma^2 + sd^2),  c_out = sigma sd / sqrt(sigma^2 + sd^2),
  c_in = 1 / sqrt(sigma^2 + sd^2),   c_noise = ln(sigma) / 4,

(sd: the data's std, sigma_data) trained with sigma ~ exp(N(P_mean, P_std^2)) on

  lambda(sigma) |D(y + sigma n; sigma) - y|^2,  lambda = (sigma^2 + sd^2) / (sigma sd)^2,

which is |F - (y - c_skip (y + sigma n)) / c_out|^2: unit weight on the network's own output.
The denoiser gives the score of every SDE here (`denoiser_score_fn`): with x(t) = alpha x0 +
sigma(t) z, x / alpha is data plus noise of std sigma(t) / alpha, so
s(x, t) = (alpha D(x / alpha; sigma / alpha) - x) / sigma(t)^2, and any sampler of
score_sde.sampling draws from an EDM-trained network.

A network whose noise embedding takes the logarithm of its input itself (embedding_type
'fourier', the VE models) is given sigma instead of c_noise; it then embeds ln(sigma), which is
c_noise up to the factor 4.

From a config (`from_config`): model.preconditioning = 'edm' with model.sigma_data and
training.edm_p_mean / edm_p_std (None: the paper's 0.5, -1.2, 1.2) makes the losses train the
network this way and models.get_score_fn turn it into the SDE's score.
"""
import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from score_sde import config_checks
from score_sde import sde as sde_lib
from score_sde.sde import expand_to

# model.preconditioning; None: the official parameterisations. 'consistency' (a consistency
# model's student, score_sde.consistency) is trained by the consistency methods, not these losses.
PRECONDITIONINGS = ('edm', 'consistency')
CONSISTENCY_METHODS = ('cd', 'ct', 'ict')
# Networks that take a real noise level as their noise input (NCSN / NCSNv2 take sigma indices).
EDM_MODELS = ('ddpm', 'mlp', 'ncsnpp')


@dataclasses.dataclass(frozen=True)
class EDMPreconditioning:
  """sigma_data: the data's std (0.5 for images in [-1, 1]); p_mean, p_std: the log-normal
  distribution of the training noise levels; log_embedding: the network takes sigma and embeds
  its logarithm itself (embedding_type 'fourier')."""

  sigma_data: float = 0.5
  p_mean: float = -1.2
  p_std: float = 1.2
  log_embedding: bool = False

  def __post_init__(self):
    for name in ('sigma_data', 'p_std'):
      if not getattr(self, name) > 0:
        raise ValueError(f'{name} = {getattr(self, name)} must be positive.')

  def coefficients(self, sigma):
    """c_skip, c_out, c_in and the network's noise input, each like sigma (B,)."""
    total = sigma**2 + self.sigma_data**2
    noise_input = sigma if self.log_embedding else jnp.log(sigma) / 4.0
    return (self.sigma_data**2 / total, sigma * self.sigma_data / jnp.sqrt(total),
            1.0 / jnp.sqrt(total), noise_input)

  def denoiser(self, network_fn):
    """D(x, sigma, **kwargs) for network_fn(x, noise_input, **kwargs) (e.g. a model_fn of
    score_sde.models, kwargs rng / class_labels); x (B, ...), sigma (B,)."""

    def denoise(x, sigma, **kwargs):
      c_skip, c_out, c_in, noise_input = self.coefficients(sigma)
      output = network_fn(expand_to(c_in, x) * x, noise_input, **kwargs)
      return expand_to(c_skip, x) * x + expand_to(c_out, x) * output

    return denoise

  def loss(self, key, x0, network_fn, *, reduce_mean: bool = True, **kwargs):
    """Per-example EDM losses (B,) of clean data x0 (B, ...): the squared error of F against its
    target, averaged (reduce_mean) or half-summed over dimensions as the other losses."""
    sigma_key, noise_key = jax.random.split(key)
    sigma = jnp.exp(self.p_mean + self.p_std * jax.random.normal(sigma_key, (x0.shape[0],)))
    noisy = x0 + expand_to(sigma, x0) * jax.random.normal(noise_key, x0.shape)
    c_skip, c_out, c_in, noise_input = self.coefficients(sigma)
    output = network_fn(expand_to(c_in, x0) * noisy, noise_input, **kwargs)
    target = (x0 - expand_to(c_skip, x0) * noisy) / expand_to(c_out, x0)
    squared = jnp.square(output - target).reshape(x0.shape[0], -1)
    return jnp.mean(squared, -1) if reduce_mean else 0.5 * jnp.sum(squared, -1)


def denoiser_score_fn(denoise, sde: sde_lib.SDE):
  """score_fn(x, t, **kwargs) of the SDE's marginals from a denoiser D(x, sigma, **kwargs)."""

  def score_fn(x, t, **kwargs):
    mean, sigma = sde.marginal_prob(jnp.ones((x.shape[0], 1)), t)
    alpha = mean[:, 0]
    denoised = denoise(x / expand_to(alpha, x), sigma / alpha, **kwargs)
    return (expand_to(alpha, x) * denoised - x) / expand_to(sigma**2, x)

  return score_fn


# Config fields of from_config -> the EDMPreconditioning parameters they set.
FIELD_PARAMETERS = {'model.sigma_data': 'sigma_data', 'training.edm_p_mean': 'p_mean',
                    'training.edm_p_std': 'p_std'}


def field_or_default(config, field: str) -> float:
  """A real config field; absent or None: the EDMPreconditioning default (the paper's)."""
  section, name = field.split('.')
  value = config[section].get(name)
  default = EDMPreconditioning.__dataclass_fields__[FIELD_PARAMETERS[field]].default
  if value is None:
    return default
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(f'Config field {field} = {value!r} must be a number (None: {default}).')
  if field != 'training.edm_p_mean' and not value > 0:
    raise ValueError(f'Config field {field} = {value!r} must be positive (None: {default}).')
  return float(value)


def check_preconditioned_model(config) -> str:
  """The name of config.model.preconditioning (one of PRECONDITIONINGS), after checking that the
  model can hold it: ValueError, naming the field, for an unknown preconditioning, discrete
  training, likelihood weighting, model.scale_by_sigma (c_out scales the output already) or a
  model without a real-valued noise input."""
  name = config_checks.choice(config, 'model.preconditioning', PRECONDITIONINGS)
  config_checks.choice(config, 'model.name', EDM_MODELS)
  if not config_checks.boolean(config, 'training.continuous'):
    raise ValueError(f"Config field model.preconditioning = {name!r} trains on continuous noise "
                     'levels and needs training.continuous = True.')
  if config.training.get('likelihood_weighting', False):
    raise ValueError('Config field training.likelihood_weighting = True does not apply to '
                     f'model.preconditioning = {name!r}, whose loss has its own weighting; set '
                     'it to False.')
  if config.model.get('scale_by_sigma', False):
    raise ValueError('Config field model.scale_by_sigma = True does not apply to '
                     f'model.preconditioning = {name!r} (c_out scales the output); set it to '
                     'False.')
  return name


def log_embedding(config) -> bool:
  """Whether the network embeds the logarithm of its noise input itself ('fourier')."""
  return config_checks.get(config, 'model.embedding_type') == 'fourier'


def from_config(config) -> Optional[EDMPreconditioning]:
  """The EDMPreconditioning that config.model.preconditioning asks for, or None (absent or None:
  the official parameterisations of models.get_score_fn). ValueError as in
  `check_preconditioned_model`, and for 'consistency', whose students these losses do not train
  (training.method 'cd', 'ct' or 'ict' does)."""
  if config.model.get('preconditioning') is None:
    return None
  if check_preconditioned_model(config) == 'consistency':
    raise ValueError("Config field model.preconditioning = 'consistency' is a consistency "
                     f'model, trained by training.method in {list(CONSISTENCY_METHODS)}, not by '
                     "the score losses (training.method = 'score').")
  return EDMPreconditioning(
      **{parameter: field_or_default(config, field)
         for field, parameter in FIELD_PARAMETERS.items()},
      log_embedding=log_embedding(config))
