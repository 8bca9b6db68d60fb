"""Consistency models' parameterisation, noise levels and distance (Song et al. 2023,
"Consistency models", Sec. 3 and App. C; Song & Dhariwal 2023, "Improved techniques for training
consistency models" (iCT), Sec. 3-5), in EDM's noise levels: x_sigma = x_0 + sigma z (a state
x_t = alpha_t x_0 + sigma_t z of any SDE here is x_t / alpha_t at sigma = sigma_t / alpha_t).

A consistency function f(x, sigma) maps every point of a probability-flow trajectory to the
trajectory's point at sigma_min. It is built from a network F as (CM Eq. 5 and App. C)

  f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma)),
  c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2),
  c_out = sd (sigma - sigma_min) / sqrt(sd^2 + sigma^2),

with EDM's c_in and c_noise (sd: sigma_data), so that f(x, sigma_min) = x exactly.

Training compares f at adjacent levels sigma_i < sigma_{i+1} of Karras et al.'s discretisation
(EDM Eq. 5) with N levels. Consistency training grows N with the step k: CT's curriculum
(CM App. C) or iCT's doubling one (iCT Eq. 8); iCT draws the pair i with its lognormal
probabilities (Eq. 9), weights it by 1 / (sigma_{i+1} - sigma_i) (Sec. 3.1) and measures the
difference with the pseudo-Huber distance (Eq. 7). Every function takes jnp arrays, traced
steps and level counts included, so the training step is one jitted program.
"""
import dataclasses
import math
from typing import Optional, Union

import jax.numpy as jnp
from jax.nn import logsumexp
from jax.scipy.special import erf

from score_sde import config_checks, edm
from score_sde.sde import expand_to

SIGMA_MIN = 0.002  # both papers' smallest level


@dataclasses.dataclass(frozen=True)
class ConsistencyParameterization:
  """sigma_min: the noise level where f is the identity (0.002 in both papers); sigma_data: the
  data's std (0.5 for images in [-1, 1]); log_embedding: the network takes sigma and embeds its
  logarithm itself (as in edm.EDMPreconditioning)."""

  sigma_min: float = SIGMA_MIN
  sigma_data: float = 0.5
  log_embedding: bool = False

  def __post_init__(self):
    if not self.sigma_min > 0:
      raise ValueError(f'sigma_min = {self.sigma_min} must be positive.')
    self._edm()  # checks sigma_data

  def _edm(self) -> edm.EDMPreconditioning:
    """EDM's preconditioning at this sigma_data: the source of c_in and the noise input."""
    return edm.EDMPreconditioning(sigma_data=self.sigma_data, log_embedding=self.log_embedding)

  def coefficients(self, sigma):
    """c_skip, c_out, c_in and the network's noise input, each like sigma (B,)."""
    _, _, c_in, noise_input = self._edm().coefficients(sigma)
    offset, sd = sigma - self.sigma_min, self.sigma_data
    return (sd**2 / (offset**2 + sd**2), sd * offset / jnp.sqrt(sd**2 + sigma**2), c_in,
            noise_input)

  def consistency_fn(self, network_fn):
    """f(x, sigma, **kwargs) for network_fn(x, noise_input, **kwargs) (e.g. a model_fn of
    score_sde.models, kwargs rng / class_labels); x (B, ...), sigma (B,) in EDM units."""

    def f(x, sigma, **kwargs):
      c_skip, c_out, c_in, noise_input = self.coefficients(sigma)
      output = network_fn(expand_to(c_in, x) * x, noise_input, **kwargs)
      return expand_to(c_skip, x) * x + expand_to(c_out, x) * output

    return f

  def denoiser(self, network_fn):
    """f as the denoiser the samplers read off a score (models.get_score_fn): the same
    function as `consistency_fn`."""
    return self.consistency_fn(network_fn)


def sigma_min_of(config) -> float:
  """config.consistency.sigma_min (absent or None: 0.002), checked positive."""
  section = config.get('consistency')
  if section is None or section.get('sigma_min') is None:
    return SIGMA_MIN
  return config_checks.positive_float(config, 'consistency.sigma_min')


def preconditioning_from_config(
    config) -> Optional[Union[edm.EDMPreconditioning, ConsistencyParameterization]]:
  """What config.model.preconditioning makes of the network: EDM's denoiser ('edm'), a
  consistency function ('consistency', at consistency.sigma_min and model.sigma_data) or None
  (the official parameterisations); checked as edm.check_preconditioned_model."""
  if config.model.get('preconditioning') is None:
    return None
  if edm.check_preconditioned_model(config) == 'edm':
    return edm.from_config(config)
  return ConsistencyParameterization(
      sigma_min=sigma_min_of(config),
      sigma_data=edm.field_or_default(config, 'model.sigma_data'),
      log_embedding=edm.log_embedding(config))


def karras_sigma(index, num_levels, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 rho: float = 7.0):
  """Level `index` (0 .. num_levels - 1, ascending) of Karras et al.'s discretisation (EDM
  Eq. 5, as CM indexes it): (sigma_min^(1/rho) + index / (N - 1) (sigma_max^(1/rho) -
  sigma_min^(1/rho)))^rho; index and num_levels may be arrays (broadcast) or traced."""
  low, high = sigma_min**(1.0 / rho), sigma_max**(1.0 / rho)
  fraction = jnp.asarray(index, jnp.float32) / (jnp.asarray(num_levels, jnp.float32) - 1.0)
  return (low + fraction * (high - low))**rho


def ct_num_levels(step, total_steps: int, s0: int = 2, s1: int = 150):
  """CT's number of levels N(k) at training step k of K (CM App. C):
  ceil(sqrt(k / K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1, from s0 at k = 0 to s1 + 1 at k = K."""
  k = jnp.asarray(step, jnp.float32)
  grown = jnp.sqrt(k / total_steps * ((s1 + 1)**2 - s0**2) + s0**2)
  return (jnp.ceil(grown - 1.0) + 1.0).astype(jnp.int32)


def ct_target_ema_rate(num_levels, s0: int = 2, mu0: float = 0.9):
  """CT's EMA rate of the target network at N levels (CM App. C): exp(s0 log(mu0) / N)."""
  return jnp.exp(s0 * math.log(mu0) / jnp.asarray(num_levels, jnp.float32))


def ict_num_levels(step, total_steps: int, s0: int = 10, s1: int = 1280):
  """iCT's number of levels N(k) at training step k of K (iCT Eq. 8): min(s0 2^floor(k / K'),
  s1) + 1 with K' = floor(K / (log2 floor(s1 / s0) + 1)): s0 + 1 levels, doubled every K'
  steps up to s1 + 1."""
  stage_steps = max(1, math.floor(total_steps / (math.log2(s1 // s0) + 1)))
  enough = math.ceil(math.log2(s1 / s0))  # doublings past which s1 is the minimum
  doublings = jnp.minimum(jnp.asarray(step, jnp.int32) // stage_steps, enough)
  return jnp.minimum(s0 * 2**doublings, s1).astype(jnp.int32) + 1


def lognormal_pair_logits(num_levels, max_levels: int, sigma_min: float = 0.002,
                          sigma_max: float = 80.0, rho: float = 7.0, p_mean: float = -1.1,
                          p_std: float = 2.0):
  """Log-probabilities (max_levels - 1,) of drawing the adjacent pair (sigma_i, sigma_{i+1})
  among N = num_levels levels (iCT Eq. 9): proportional to erf((ln sigma_{i+1} - P_mean) /
  (sqrt(2) P_std)) - erf((ln sigma_i - P_mean) / (sqrt(2) P_std)), the lognormal mass between
  them; -inf for the pairs i >= N - 1 that do not exist (num_levels may be traced, max_levels
  fixes the shape: the largest N of the curriculum)."""
  index = jnp.arange(max_levels - 1)
  lower = karras_sigma(index, num_levels, sigma_min, sigma_max, rho)
  upper = karras_sigma(index + 1, num_levels, sigma_min, sigma_max, rho)
  scale = math.sqrt(2.0) * p_std
  mass = erf((jnp.log(upper) - p_mean) / scale) - erf((jnp.log(lower) - p_mean) / scale)
  logits = jnp.where(index < num_levels - 1, jnp.log(jnp.maximum(mass, 0.0)), -jnp.inf)
  return logits - logsumexp(logits)


def ict_weight(sigma, sigma_next):
  """iCT's weight of the pair (sigma_i, sigma_{i+1}): 1 / (sigma_{i+1} - sigma_i) (Sec. 3.1)."""
  return 1.0 / (sigma_next - sigma)


def pseudo_huber_c(dimension: int) -> float:
  """iCT's pseudo-Huber constant for data of `dimension` numbers: 0.00054 sqrt(d) (Sec. 3.3;
  0.03 for CIFAR-10)."""
  return 0.00054 * math.sqrt(dimension)


def pseudo_huber(x, y, c=None):
  """The pseudo-Huber distance (iCT Eq. 7) per example, (B,): sqrt(|x - y|^2 + c^2) - c over
  each example's numbers (x, y (B, ...)); c None: pseudo_huber_c of the example size. About
  |x - y|^2 / (2 c) for small differences and |x - y| - c for large ones."""
  if c is None:
    c = pseudo_huber_c(math.prod(x.shape[1:]))
  squared = jnp.sum(jnp.square(x - y).reshape(x.shape[0], -1), axis=-1)
  return jnp.sqrt(squared + c**2) - c
