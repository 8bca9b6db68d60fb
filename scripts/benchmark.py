"""Benchmarks, run side by side in one process (this machine is shared: compare ratios).

  python scripts/benchmark.py likelihood [--repeats 3] [--batch 16] [--size 16]

likelihood: bits/dim of a batch of images (size x size x 3) under a small untrained network,
through the probability-flow ODE with a Hutchinson (Rademacher) divergence, rtol = atol = 1e-5:
  * ours: score_sde.likelihood (diffrax Dopri5, one jitted program, each sample solved alone);
  * scipy: the official approach, scipy.integrate.solve_ivp(RK45) over the whole batch as one
    ODE, calling the same jitted drift-and-divergence function once per evaluation.
Reports the median wall time of `repeats` runs (compile excluded, and reported separately),
the NFE of each and their bits/dim, as JSON on stdout.
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy import integrate

from score_sde import likelihood, models, sampling
from score_sde import sde as sde_lib
from configs import default_toy_configs

RTOL = ATOL = 1e-5
EPS = 1e-5


def _untrained_model(image_shape):
  config = default_toy_configs.get_default_configs()
  config.model.update(nf=256, num_layers=3)
  model, variables = models.init_model(jax.random.PRNGKey(0), config, image_shape)
  sde = sde_lib.get_sde(config)
  return sde, models.get_score_fn(sde, model, variables, train=False, continuous=True)


def _median_seconds(run, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = run()
    times.append(time.perf_counter() - start)
  return float(np.median(times)), result


def _ours(sde, score_fn, images, repeats):
  bpd_fn = likelihood.get_bpd_fn(sde, data_scaler=lambda u: 2 * u - 1, dequantization='uniform',
                                 solver=sampling.ODESolver(rtol=RTOL, atol=ATOL), eps=EPS)
  jitted = jax.jit(lambda key, x: bpd_fn(key, score_fn, x))
  key = jax.random.PRNGKey(1)
  start = time.perf_counter()
  jax.block_until_ready(jitted(key, images))
  first = time.perf_counter() - start
  seconds, (bpd, _, nfe) = _median_seconds(
      lambda: jax.block_until_ready(jitted(key, images)), repeats)
  return {'seconds': seconds, 'compile_seconds': first - seconds,
          'nfe_mean': float(np.mean(nfe)), 'nfe_max': int(np.max(nfe)),
          'bpd': float(np.mean(bpd))}


def _scipy(sde, score_fn, images, repeats):
  """The official implementation's likelihood: one RK45 solve over the flattened batch."""
  shape = images.shape
  dim = int(np.prod(shape[1:]))
  probes = jax.random.rademacher(jax.random.PRNGKey(2), shape).astype(jnp.float32)
  drift = lambda x, t: sde.reverse(score_fn, probability_flow=True).sde(x, t)[0]  # noqa: E731

  @jax.jit
  def drift_and_divergence(x, t):
    vec_t = jnp.full(shape[0], t)
    value, jvp = jax.jvp(lambda y: drift(y, vec_t), (x,), (probes,))
    return value, jnp.sum((jvp * probes).reshape(shape[0], -1), axis=-1)

  def ode_func(t, state):
    x = jnp.asarray(state[:-shape[0]].reshape(shape), jnp.float32)
    value, divergence = drift_and_divergence(x, t)
    return np.concatenate([np.asarray(value).reshape(-1), np.asarray(divergence)]).astype(
        np.float64)

  dequantized = (255.0 * np.asarray(images) + np.random.default_rng(0).uniform(size=shape)) / 256
  initial = np.concatenate([(2 * dequantized - 1).reshape(-1), np.zeros(shape[0])])

  def run():
    solution = integrate.solve_ivp(ode_func, (EPS, sde.T), initial, rtol=RTOL, atol=ATOL,
                                   method='RK45')
    z = jnp.asarray(solution.y[:-shape[0], -1].reshape(shape), jnp.float32)
    logp = np.asarray(sde.prior_logp(z)) + solution.y[-shape[0]:, -1]
    bpd = -logp / (dim * np.log(2)) - 1 + 8
    return solution.nfev, bpd

  start = time.perf_counter()
  jax.block_until_ready(drift_and_divergence(jnp.asarray(initial[:-shape[0]].reshape(shape),
                                                         jnp.float32), EPS))
  compile_seconds = time.perf_counter() - start
  seconds, (nfe, bpd) = _median_seconds(run, repeats)
  return {'seconds': seconds, 'compile_seconds': compile_seconds, 'nfe': int(nfe),
          'bpd': float(np.mean(bpd))}


def benchmark_likelihood(repeats: int, batch: int, size: int) -> dict:
  image_shape = (size, size, 3)
  sde, score_fn = _untrained_model(image_shape)
  pixels = jax.random.randint(jax.random.PRNGKey(3), (batch, *image_shape), 0, 256)
  images = pixels.astype(jnp.float32) / 255.0
  ours = _ours(sde, score_fn, images, repeats)
  scipy_result = _scipy(sde, score_fn, images, repeats)
  return {'benchmark': 'likelihood', 'batch': batch, 'image_shape': image_shape,
          'rtol': RTOL, 'atol': ATOL, 'repeats': repeats, 'device': str(jax.devices()[0]),
          'ours_diffrax': ours, 'official_scipy_rk45': scipy_result,
          'speedup': scipy_result['seconds'] / ours['seconds']}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('benchmark', choices=['likelihood'])
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--size', type=int, default=16)
  args = parser.parse_args()
  print(json.dumps(benchmark_likelihood(args.repeats, args.batch, args.size), indent=2))


if __name__ == '__main__':
  main()
