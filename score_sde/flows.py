"""The velocity of a process's probability flow, and score functions that carry it (flow matching,
Lipman et al. 2023; rectified flow, Liu et al. 2023).

Every process here perturbs data as x(t) = alpha(t) x0 + sigma(t) z (`SDE.marginal_prob`). The
path through a given x0 and z moves with the conditional velocity u = alpha' x0 + sigma' z (primes:
time derivatives, taken here by forward-mode differentiation of the kernel), and the flow's
velocity is its conditional mean given x(t) = x,

  v(x, t) = E[u | x(t) = x] = alpha' x0_hat + sigma' z_hat,

x0_hat = E[x0 | x], z_hat = E[z | x] = -sigma s(x, t). This is the probability-flow drift
f x - g^2 s / 2 (Song et al. 2021, Eq. 13) of every SDE whose marginals the kernel gives. Solving
x = alpha x0_hat + sigma z_hat and v for z_hat turns a velocity into the score
(`score_from_velocity`),

  s = -z_hat / sigma,   z_hat = (alpha v - alpha' x) / (alpha sigma' - sigma alpha'),

for the linear path s = -(x + (1 - t) v) / t. At t = T of the rectified flow (alpha = 0) the score
is -x whatever v is, and f, g^2 are infinite: the ODE drift cannot be recovered from the score
there. So a velocity model's score function carries its velocity (`VelocityScore`), and the ODE
sampler and the likelihood (sampling.ode.probability_flow_drift) use it directly.

A model predicts the velocity with model.parameterization = 'velocity' (`is_velocity`; the only
and default parameterisation of training.sde = 'rectified_flow'); losses.flow_matching_loss
trains it, models.get_score_fn wraps it into a VelocityScore.
"""
import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from score_sde import config_checks
from score_sde import sde as sde_lib
from score_sde.sde import expand_to

PARAMETERIZATIONS = ('velocity',)  # model.parameterization; None: the score parameterisations


def kernel(sde: sde_lib.SDE, t):
  """alpha(t) and sigma(t) of the perturbation kernel, each (B,) for t (B,)."""
  mean, std = sde.marginal_prob(jnp.ones((jnp.shape(t)[0], 1)), t)
  return mean[:, 0], std


def kernel_derivatives(sde: sde_lib.SDE, t):
  """((alpha, sigma), (alpha', sigma')) at t (B,), each (B,): the kernel and its time derivative
  (a forward-mode derivative of `marginal_prob`, exact for every SDE)."""
  return jax.jvp(lambda time: kernel(sde, time), (t,), (jnp.ones_like(t),))


def conditional_path(sde: sde_lib.SDE, x0, z, t):
  """The point x(t) = alpha x0 + sigma z of the path from x0 (B, ...) to noise z (B, ...) and its
  conditional velocity u = alpha' x0 + sigma' z (the flow-matching target: Lipman et al. 2023,
  Theorem 3; for the linear path u = z - x0, Liu et al. 2023, Eq. 1), each like x0."""
  (alpha, sigma), (d_alpha, d_sigma) = kernel_derivatives(sde, t)
  point = expand_to(alpha, x0) * x0 + expand_to(sigma, x0) * z
  return point, expand_to(d_alpha, x0) * x0 + expand_to(d_sigma, x0) * z


def score_from_velocity(sde: sde_lib.SDE, v, x, t):
  """The score s = -z_hat / sigma of velocity v at (x, t), x and v (B, ...), t (B,), with
  z_hat = (alpha v - alpha' x) / (alpha sigma' - sigma alpha') (module docstring)."""
  (alpha, sigma), (d_alpha, d_sigma) = kernel_derivatives(sde, t)
  noise = (expand_to(alpha, x) * v - expand_to(d_alpha, x) * x) / expand_to(
      alpha * d_sigma - sigma * d_alpha, x)
  return -noise / expand_to(sigma, x)


@dataclasses.dataclass(frozen=True)
class VelocityScore:
  """A score function given by a velocity: score_fn(x, t, *args, **kwargs) -> s (B, ...), and
  `velocity(x, t, *args, **kwargs)` -> v (B, ...), for velocity_fn(x, t, *args, **kwargs) of
  the process `sde`; x (B, ...), t (B,). Extra arguments (rng, class_labels) go to velocity_fn."""

  velocity_fn: Callable
  sde: sde_lib.SDE

  def velocity(self, x, t, *args, **kwargs):
    return self.velocity_fn(x, t, *args, **kwargs)

  def __call__(self, x, t, *args, **kwargs):
    return score_from_velocity(self.sde, self.velocity_fn(x, t, *args, **kwargs), x, t)


def velocity_score_fn(velocity_fn: Callable, sde: sde_lib.SDE) -> VelocityScore:
  """The score function of velocity_fn(x, t, ...) on `sde`, carrying the velocity."""
  return VelocityScore(velocity_fn, sde)


def transformed(score_fn: Callable, transform: Callable) -> Callable:
  """transform(score_fn), for a transform that binds arguments (class labels) or mixes score
  functions with weights summing to 1 (classifier-free guidance). The velocity is affine in the
  score with coefficients that depend only on (x, t), so the same transform of a VelocityScore's
  velocity gives the velocity of the result: a VelocityScore comes back a VelocityScore."""
  if isinstance(score_fn, VelocityScore):
    return VelocityScore(transform(score_fn.velocity_fn), score_fn.sde)
  return transform(score_fn)


def is_velocity(config) -> bool:
  """Whether the config's model predicts the velocity: model.parameterization = 'velocity', or
  None (absent) with training.sde = 'rectified_flow', whose only parameterisation it is.
  ValueError, naming the field, for an unknown parameterization and for what a velocity model
  cannot combine with: discrete training, likelihood weighting, model.preconditioning,
  model.scale_by_sigma."""
  name = config.model.get('parameterization')
  if name is None and config.get('training', {}).get('sde') != 'rectified_flow':
    return False
  if name is not None:
    config_checks.choice(config, 'model.parameterization', PARAMETERIZATIONS)
  what = "a velocity model (model.parameterization 'velocity', the only one of 'rectified_flow')"
  if not config_checks.boolean(config, 'training.continuous'):
    raise ValueError(f'Config field training.continuous = False: {what} is trained by flow '
                     'matching on continuous times; set it to True.')
  if config.training.get('likelihood_weighting', False):
    raise ValueError(f'Config field training.likelihood_weighting = True does not apply to {what}: '
                     'the flow-matching loss has no weighting; set it to False.')
  preconditioning = config.model.get('preconditioning')
  if preconditioning is not None:
    raise ValueError(f'Config field model.preconditioning = {preconditioning!r} does not combine '
                     f'with {what}: the network predicts the velocity; set it to None.')
  if config.model.get('scale_by_sigma', False):
    raise ValueError(f'Config field model.scale_by_sigma = True does not apply to {what}: the '
                     'network predicts the velocity, not sigma times the score; set it to False.')
  return True
