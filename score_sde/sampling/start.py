"""Where a sampling run starts: at the prior's time T from prior draws (the default), or at a time
t_start in (eps, T] from a given state x_start (SDEdit, Meng et al. 2022: data perturbed to
t_start, as img2img does; or initial noise drawn elsewhere). Every sampler factory takes
`t_start` and its `sample` takes `x_start`; these helpers check them alike.
"""
import jax
import jax.numpy as jnp

from score_sde.sampling import streams


def start_time(sde, t_start, eps: float) -> float:
  """t_start as a float (None: T), refused unless eps < t_start <= T."""
  if t_start is None:
    return sde.T
  if not eps < t_start <= sde.T:
    raise ValueError(f't_start = {t_start} must lie in (eps, T] = ({eps}, {sde.T}].')
  return float(t_start)


def prior_draws(sde, keys, shape):
  """Prior samples of `shape` (B, ...), row k from fold_in(keys[k], 0), in every sampler."""
  return jax.vmap(lambda k: sde.prior_sampling(k, shape[1:]))(streams.fold_in_each(keys, 0))


def initial_state(sde, keys, shape, x_start, t_start: float):
  """The state a run starts from, shape (B, ...) = `shape`: x_start (as the default float
  dtype), or, when it is None, the prior draws (`prior_draws`), which only a run that starts at
  t_start = T may use."""
  if x_start is None:
    if t_start != sde.T:
      raise ValueError(f'A run that starts at t_start = {t_start} < T = {sde.T} needs x_start, '
                       'the state at t_start (prior draws are states at T only).')
    return prior_draws(sde, keys, shape)
  if jnp.shape(x_start) != tuple(shape):
    raise ValueError(f'x_start has shape {jnp.shape(x_start)}; the run samples shape '
                     f'{tuple(shape)}.')
  return jnp.asarray(x_start, jax.dtypes.canonicalize_dtype(jnp.float64))
