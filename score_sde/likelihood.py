"""Exact log-likelihoods through the probability-flow ODE (paper, Sec. 4.3 and App. D.2).

Along dx/dt = f~(x, t) = f(x, t) - g(t)^2 s(x, t) / 2, the instantaneous change of variables
gives

  log p_eps(x(eps)) = log p_T(x(T)) + int_eps^T div f~(x(t), t) dt        (Eq. 39),

with the prior in place of p_T (the rectified flow's p_T is the prior; its f~ is the velocity of
its score function, exact at T, sampling.ode.probability_flow_drift). The ODE and the integral
are solved together, one sample at a time (vmap), so a sample's value does not depend on the
rest of its batch. The divergence is exact (the trace of the Jacobian: d forward-mode products,
for small dimension) or Hutchinson's estimate E_v[v^T (d f~/dx) v] with `num_probes` Rademacher
or Gaussian probes v, drawn once per sample and fixed for the whole solve (Grathwohl et al.
2019).

Bits per dimension of images (`get_bpd_fn`). Images x in [0, 1] on the 256-level grid are
dequantized, u = (255 x + U) / 256 with U ~ Uniform[0, 1)^d, and scaled, y = a u + b (the data
scaler; a = 2 for centred data in [-1, 1], else 1). Then

  -log2 P(x) <= E_U[-log2 p_u(u)] + d log2(256),   log p_u(u) = log p_y(y) + d log a,

so  bpd = -log p_y(y) / (d ln 2) - log2(a) + 8: the official +7 (centred) / +8 offsets. With
`dequantization='none'` (continuous data) it is the differential entropy rate
-log p_x(x) / (d ln 2) of the data in its own units (no +8), and may be negative.
"""
import jax
import jax.numpy as jnp
import numpy as np

from score_sde import config_checks, datasets
from score_sde import models as models_lib
from score_sde.sampling import ode, streams

DIVERGENCES = ('hutchinson_rademacher', 'hutchinson_gaussian', 'exact')
DEQUANTIZATIONS = ('uniform', 'none')


def _draw_probes(key, divergence: str, num_probes: int, shape):
  if divergence == 'hutchinson_gaussian':
    return jax.random.normal(key, (num_probes, *shape))
  return jax.random.rademacher(key, (num_probes, *shape)).astype(jnp.float32)


def get_log_likelihood_fn(sde, *, solver: ode.ODESolver = ode.ODESolver(),
                          divergence: str = 'hutchinson_rademacher', num_probes: int = 1,
                          eps: float = 1e-5, continuous: bool = True):
  """Returns log_likelihood(key, score_fn, y) -> (logp (B,) in nats, z (B, ...), nfe (B,)).

  y (B, ...) are points in the model's space at time eps; z are their images at time T.
  Sample k draws its Hutchinson probes from fold_in(key, k). `continuous=False` declares a
  score conditioned on discrete steps (see sampling.ode.get_flow_maps).
  """
  if divergence not in DIVERGENCES:
    raise ValueError(f'Unknown divergence {divergence!r}; allowed: {list(DIVERGENCES)}.')
  if not (isinstance(num_probes, int) and num_probes >= 1):
    raise ValueError(f'num_probes = {num_probes} must be an integer >= 1.')
  sde.check_eps(eps)
  jump_ts = ode.score_jump_times(sde, continuous)

  def log_likelihood(key, score_fn, y):
    drift = ode.probability_flow_drift(sde, score_fn)

    def vector_field(t, state, probes):
      """(drift, divergence) from one batch of forward-mode products that shares the primal."""
      x, _ = state
      if divergence == 'exact':  # tangents: the standard basis, for the trace of the Jacobian
        tangents = jnp.eye(x.size, dtype=x.dtype).reshape((x.size, *x.shape))
      else:
        tangents = probes
      value, products = jax.vmap(lambda v: jax.jvp(lambda y: drift(y, t), (x,), (v,)),
                                 out_axes=(None, 0))(tangents)
      if divergence == 'exact':
        return value, jnp.trace(products.reshape(x.size, x.size))
      return value, jnp.mean(jnp.sum((tangents * products).reshape(len(tangents), -1), -1))

    def solve_one(sample_key, x):
      probes = (None if divergence == 'exact' else
                _draw_probes(sample_key, divergence, num_probes, x.shape))
      (z, delta_logp), nfe = solver.solve(vector_field, (x, jnp.zeros(())), eps, sde.T, probes,
                                          jump_ts=jump_ts)
      return z, delta_logp, nfe

    keys = streams.sample_keys(key, 0, y.shape[0])
    z, delta_logp, nfe = jax.vmap(solve_one)(keys, y)
    return sde.prior_logp(z) + delta_logp, z, nfe

  return log_likelihood


def get_bpd_fn(sde, *, data_scaler=lambda x: x, dequantization: str = 'uniform', **kwargs):
  """Returns bits_per_dim(key, score_fn, x) -> (bpd (B,), z, nfe (B,)) for data x in data units
  (before the scaler).

  With dequantization 'uniform', x are images in [0, 1] on the 256-level grid; `data_scaler` is
  the affine data scaler y = a u + b (a is read off as scaler(1) - scaler(0)); the formula is in
  the module docstring. Other keyword arguments go to `get_log_likelihood_fn`. Called outside
  jit, it refuses data outside [0, 1] for uniform dequantization.
  """
  if dequantization not in DEQUANTIZATIONS:
    raise ValueError(f'Unknown dequantization {dequantization!r}; allowed: '
                     f'{list(DEQUANTIZATIONS)}.')
  log_likelihood = get_log_likelihood_fn(sde, **kwargs)
  scale = float(data_scaler(np.float32(1.0)) - data_scaler(np.float32(0.0)))
  offset_bits = 8.0 if dequantization == 'uniform' else 0.0

  def bits_per_dim(key, score_fn, x):
    if dequantization == 'uniform':
      _check_unit_range(x)
      noise_key, key = jax.random.split(key)
      x = (255.0 * x + jax.random.uniform(noise_key, x.shape)) / 256.0
    logp, z, nfe = log_likelihood(key, score_fn, data_scaler(x))
    dim = np.prod(x.shape[1:])
    return -logp / (dim * np.log(2.0)) - np.log2(scale) + offset_bits, z, nfe

  return bits_per_dim


def _check_unit_range(x):
  if isinstance(x, jax.core.Tracer):
    return
  low, high = float(jnp.min(x)), float(jnp.max(x))
  if low < 0.0 or high > 1.0:
    raise ValueError(f'Images for bits/dim must lie in [0, 1] (the 256-level grid); got values in '
                     f'[{low}, {high}]. Pass data before the data scaler.')


def get_model_bpd_fn(config, sde, model, latent: bool = False):
  """Jitted bpd(variables, key, x) -> (bpd (B,), z, nfe (B,)) of a trained model on data x in
  data units (before the scaler), from config.likelihood (solver, rtol, atol, num_steps,
  divergence, num_probes, eps) and data.dequantization, honouring config.training.continuous
  for the score. With `latent`, x are a latent run's latents: no scaler, no dequantization."""
  solver = ode.ODESolver(solver=config_checks.choice(config, 'likelihood.solver', ode.SOLVERS),
                         rtol=config_checks.positive_float(config, 'likelihood.rtol'),
                         atol=config_checks.positive_float(config, 'likelihood.atol'),
                         num_steps=config_checks.positive_int(config, 'likelihood.num_steps'))
  dequantization = ('none' if latent else
                    config_checks.choice(config, 'data.dequantization', DEQUANTIZATIONS))
  continuous = bool(config_checks.get(config, 'training.continuous'))
  bits_per_dim = get_bpd_fn(
      sde, data_scaler=(lambda x: x) if latent else datasets.get_data_scaler(config),
      dequantization=dequantization,
      solver=solver, divergence=config_checks.choice(config, 'likelihood.divergence', DIVERGENCES),
      num_probes=config_checks.positive_int(config, 'likelihood.num_probes'),
      eps=config_checks.positive_float(config, 'likelihood.eps'), continuous=continuous)

  @jax.jit
  def run(variables, key, x):
    score_fn = models_lib.get_score_fn(sde, model, variables, train=False, continuous=continuous)
    return bits_per_dim(key, score_fn, x)

  def bpd(variables, key, x):
    if dequantization == 'uniform':
      _check_unit_range(x)
    return run(variables, key, x)

  return bpd
