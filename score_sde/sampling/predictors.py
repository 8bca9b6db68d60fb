"""Predictors: one step of a numerical solver of the reverse-time SDE (or probability-flow ODE),
from time t to t - T/N. `update(keys, x, t)` takes per-sample keys (B,), x (B, ...) and t (B,),
and returns (x, x_mean), x_mean being the step without its noise."""
import abc

from score_sde.registry import Registry
from score_sde.sampling import streams
from score_sde.sde import expand_to

_PREDICTORS = Registry('predictor')
register_predictor = _PREDICTORS.register
get_predictor = _PREDICTORS.get
registered_predictors = _PREDICTORS.names


class Predictor(abc.ABC):
  """Base class; `evals_per_step` is the number of score evaluations of one update."""

  evals_per_step = 1

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


@register_predictor(name='none')
class NonePredictor(Predictor):
  """No predictor (corrector-only sampling)."""

  evals_per_step = 0

  def update(self, keys, x, t):
    return x, x
