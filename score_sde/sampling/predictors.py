"""Predictors: one step of a numerical solver of the reverse-time SDE (or probability-flow ODE),
from time t to t - T/N. `update(keys, x, t)` takes per-sample keys (B,), x (B, ...) and t (B,),
and returns (x, x_mean), x_mean being the step without its noise."""
import abc

import jax.numpy as jnp

from score_sde import sde as sde_lib
from score_sde.registry import Registry
from score_sde.sampling import streams
from score_sde.sde import expand_to

_PREDICTORS = Registry('predictor')
register_predictor = _PREDICTORS.register
get_predictor = _PREDICTORS.get
registered_predictors = _PREDICTORS.names


class Predictor(abc.ABC):
  """Base class; `evals_per_step` is the number of score evaluations of one update;
  `has_probability_flow` says whether the step has a noise-free probability-flow form."""

  evals_per_step = 1
  has_probability_flow = True

  def __init__(self, sde, score_fn, probability_flow: bool = False):
    self.sde = sde
    self.score_fn = score_fn
    self.rsde = sde.reverse(score_fn, probability_flow)

  @abc.abstractmethod
  def update(self, keys, x, t):
    """One step from t to t - T/N; returns (x, x_mean)."""


@register_predictor(name='euler_maruyama')
class EulerMaruyamaPredictor(Predictor):
  """x <- x - f_rev(x, t) dt + g(t) sqrt(dt) z with dt = T/N (f_rev: reverse drift, Eq. 6)."""

  def update(self, keys, x, t):
    dt = self.sde.T / self.sde.N
    drift, diffusion = self.rsde.sde(x, t)
    x_mean = x - drift * dt
    return x_mean + expand_to(diffusion * dt**0.5, x) * streams.normal_like(keys, x), x_mean


@register_predictor(name='reverse_diffusion')
class ReverseDiffusionPredictor(Predictor):
  """Reverse of the SDE's own discretization: x <- x - f_i + G_i^2 s + G_i z (paper, Eq. 46)."""

  def update(self, keys, x, t):
    rev_f, rev_G = self.rsde.discretize(x, t)
    x_mean = x - rev_f
    return x_mean + expand_to(rev_G, x) * streams.normal_like(keys, x), x_mean


@register_predictor(name='ancestral_sampling')
class AncestralSamplingPredictor(Predictor):
  """Ancestral sampling of the discrete chain x_i = a_i x_{i-1} + G_i z (paper, App. F).

  The mean is the exact E[x_{i-1} | x_i] = (x_i + G_i^2 s(x_i)) / a_i (Tweedie's formula for one
  Gaussian step). The noise std is
    VP (DDPM, Eq. 47):   G_i = sqrt(beta_i), DDPM's sigma^2 = beta choice, as the official code;
    VE (SMLD, Eq. 45):   sqrt(sigma_{i-1}^2 (sigma_i^2 - sigma_{i-1}^2) / sigma_i^2);
    subVP (exact-transition chain, see subVPSDE.transition): sqrt(G_i^2 v(s) / v(t)).
  The last two are the std of q(x_{i-1} | x_i, x_0), the DDPM posterior of that chain; the
  official implementation has no subVP ancestral step. The step is a stochastic chain, so
  `probability_flow` is refused.
  """

  has_probability_flow = False

  def __init__(self, sde, score_fn, probability_flow: bool = False):
    if not isinstance(sde, (sde_lib.VPSDE, sde_lib.subVPSDE, sde_lib.VESDE)):
      raise ValueError(f'ancestral_sampling supports VPSDE, subVPSDE and VESDE, not '
                       f'{type(sde).__name__}.')
    super().__init__(sde, score_fn, probability_flow)

  def _noise_std(self, t, G):
    sde = self.sde
    if isinstance(sde, sde_lib.VPSDE):
      return G
    if isinstance(sde, sde_lib.subVPSDE):
      return G * jnp.sqrt(sde.variance(sde.step_start(t)) / sde.variance(t))
    sigma, previous = sde.step_sigmas(t)
    return G * previous / sigma

  def update(self, keys, x, t):
    a, G = self.sde.transition(t)
    std = self._noise_std(t, G)
    x_mean = (x + expand_to(G**2, x) * self.score_fn(x, t)) / expand_to(a, x)
    return x_mean + expand_to(std, x) * streams.normal_like(keys, x), x_mean


@register_predictor(name='none')
class NonePredictor(Predictor):
  """No predictor (corrector-only sampling)."""

  evals_per_step = 0

  def update(self, keys, x, t):
    return x, x
