"""Reflow and one-step distillation of a flow (Liu et al. 2023, "Flow straight and fast"), on any
process whose score function carries a velocity (score_sde.flows).

A trained flow couples each prior draw z with the point x0 its ODE carries z to (`reflow_pairs`).
Training a new velocity on that coupling with the flow-matching loss (`reflow_loss`) gives the
next rectified flow, whose paths are straighter (`straightness`), so few Euler steps follow them
well; regressing one Euler step from T onto x0 (`distillation_loss`) trains a one-step sampler.

Velocities here are velocity_fn(x, t) -> v like x, for x (B, ...) and t (B,) (a VelocityScore's
`.velocity`, or a network's); pairs z, x0 are arrays (B, ...).
"""
import jax
import jax.numpy as jnp

from score_sde import flows, losses
from score_sde.sampling import ode, start, streams


def reflow_pairs(key, score_fn, sde, shape, solver: ode.ODESolver = ode.ODESolver(), *,
                 eps: float = 1e-3, first_index: int = 0):
  """(z, x0), each of `shape` (B, ...): prior draws z, sample k from fold_in(key, first_index +
  k) (the draws of every sampler), and their images x0 under the flow's ODE from T to eps
  (`sampling.get_flow_maps`' decode with `solver`; no noise removal)."""
  z = start.prior_draws(sde, streams.sample_keys(key, first_index, shape[0]), shape)
  _, decode = ode.get_flow_maps(sde, solver, eps)
  return z, decode(score_fn, z)[0]


def reflow_loss(key, z, x0, velocity_fn, sde, *, reduce_mean: bool = True,
                eps: float = 1e-5):
  """Per-example flow-matching losses (B,) on the coupling (x0, z) (Liu et al. 2023, Eq. 1 with
  (X0, X1) the pairs): losses.flow_matching_loss at t ~ U(eps, T) drawn from `key`, with
  x(t) = alpha x0 + sigma z and target alpha' x0 + sigma' z (z - x0 on the linear path)."""
  return losses.flow_matching_loss(key, x0, lambda x, t, rng: velocity_fn(x, t), sde,
                                   reduce_mean=reduce_mean, eps=eps, z=z)


def one_step(velocity_fn, sde, z, eps: float = 1e-3):
  """One Euler step of the flow's ODE from T to eps, z - (T - eps) v(z, T) (B, ...): the ODE
  sampler with ode_solver 'euler' and ode_steps = 1, before noise removal."""
  return z - (sde.T - eps) * velocity_fn(z, jnp.full(z.shape[0], sde.T))


def distillation_loss(z, x0, velocity_fn, sde, *, reduce_mean: bool = True,
                      eps: float = 1e-3):
  """Per-example losses (B,) of one-step distillation (Liu et al. 2023's "distillation"):
  |one_step(z) - x0|^2, one Euler step from T regressed onto the pair's x0; averaged over
  dimensions (reduce_mean) or half-summed, as the other losses."""
  squared = jnp.square(one_step(velocity_fn, sde, z, eps) - x0).reshape(z.shape[0], -1)
  return jnp.mean(squared, -1) if reduce_mean else 0.5 * jnp.sum(squared, -1)


def straightness(key, z, x0, velocity_fn, sde, *, eps: float = 1e-3):
  """The straightness S = 1 / (T - eps) int_eps^T E|u - v(x(t), t)|^2 dt of a flow on its
  coupling (Liu et al. 2023's S(Z), on the interpolation of the pairs): x(t) = alpha x0 + sigma z
  and u = alpha' x0 + sigma' z (z - x0 on the linear path), |.|^2 summed over dimensions. Zero
  for a flow whose paths are the straight ones between its pairs. Monte Carlo with one
  t ~ U(eps, T) per pair drawn from `key`; returns (S, its standard error), scalars."""
  t = jax.random.uniform(key, (z.shape[0],), minval=eps, maxval=sde.T)
  point, target = flows.conditional_path(sde, x0, z, t)
  values = jnp.sum(jnp.square(velocity_fn(point, t) - target).reshape(z.shape[0], -1), -1)
  return jnp.mean(values), jnp.std(values) / jnp.sqrt(values.shape[0])
