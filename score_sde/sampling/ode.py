"""The probability-flow ODE (paper, Eq. 13), dx/dt = f(x, t) - g(t)^2 s(x, t) / 2, solved with
diffrax inside one jitted program. A score function that carries a velocity (score_sde.flows)
gives that drift directly: the rectified flow's ODE then runs from t = T, one Euler step being
x(eps) = z - (T - eps) v(z, T).

Each sample's ODE is solved on its own (`jax.vmap` over the batch): an adaptive solver picks its
step sizes from that sample's error alone, so a sample's result never depends on its
batch-mates. NFE is returned per sample, shape (B,). The score is therefore called with a batch
of one sample: a score_fn must not capture per-sample arrays of the whole batch.

Solvers: 'dopri5' (default) and 'tsit5' are adaptive, with `rtol` / `atol`; 'euler' and 'heun'
take `num_steps` equal steps.
"""
import dataclasses

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from score_sde.sampling import start, streams

SOLVERS = {'dopri5': diffrax.Dopri5, 'tsit5': diffrax.Tsit5, 'euler': diffrax.Euler,
           'heun': diffrax.Heun}
ADAPTIVE_SOLVERS = ('dopri5', 'tsit5')
# Score evaluations of one step (first-same-as-last stages are counted once).
_EVALS_PER_STEP = {'dopri5': 6, 'tsit5': 6, 'euler': 1, 'heun': 2}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ODESolver:
  """How to solve an ODE on [t0, t1]: a diffrax solver with tolerances or a step count.

  solver: one of SOLVERS. rtol, atol: tolerances of the adaptive solvers. num_steps: number of
  equal steps of 'euler' / 'heun'. max_steps: cap on the steps of an adaptive solve.
  """

  solver: str = 'dopri5'
  rtol: float = 1e-5
  atol: float = 1e-5
  num_steps: int = 100
  max_steps: int = 100_000

  def __post_init__(self):
    if self.solver not in SOLVERS:
      raise ValueError(f'Unknown ODE solver {self.solver!r}; allowed: {sorted(SOLVERS)}.')
    for name in ('rtol', 'atol', 'num_steps', 'max_steps'):
      if not getattr(self, name) > 0:
        raise ValueError(f'{name} = {getattr(self, name)} must be positive.')

  @property
  def adaptive(self) -> bool:
    return self.solver in ADAPTIVE_SOLVERS

  def solve(self, vector_field, y0, t0: float, t1: float, args=None, jump_ts=None):
    """Solves dy/dt = vector_field(t, y, args) for one sample's state y0 (any pytree) from t0 to
    t1 (either direction). `jump_ts`: times where the vector field jumps, which an adaptive
    solver then steps to exactly instead of shrinking its steps around them. Returns
    (y(t1), nfe)."""
    if self.adaptive:
      dt0 = None
      controller = diffrax.PIDController(rtol=self.rtol, atol=self.atol, jump_ts=jump_ts)
      max_steps = self.max_steps
    else:
      dt0, controller = (t1 - t0) / self.num_steps, diffrax.ConstantStepSize()
      max_steps = self.num_steps
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field), SOLVERS[self.solver](), t0, t1, dt0, y0, args=args,
        saveat=diffrax.SaveAt(t1=True), stepsize_controller=controller, max_steps=max_steps)
    num_steps = solution.stats['num_steps']
    if self.adaptive:  # + 1: the first stage at t0.
      nfe = 1 + _EVALS_PER_STEP[self.solver] * num_steps
    else:
      nfe = _EVALS_PER_STEP[self.solver] * num_steps
    return jax.tree_util.tree_map(lambda leaf: leaf[0], solution.ys), nfe


def probability_flow_drift(sde, score_fn):
  """drift(x, t) for ONE sample x (...) and scalar t: f(x, t) - g(t)^2 s(x, t) / 2 (Eq. 13), or
  the velocity v(x, t) of a score function that carries one (score_sde.flows.VelocityScore),
  which is that drift, exact also where f and g^2 are infinite (t = T of the rectified flow)."""
  velocity = getattr(score_fn, 'velocity', None)
  if velocity is not None:
    return lambda x, t: velocity(x[None], jnp.reshape(t, (1,)))[0]
  reverse = sde.reverse(score_fn, probability_flow=True)

  def drift(x, t):
    return reverse.sde(x[None], jnp.reshape(t, (1,)))[0][0]

  return drift


def score_jump_times(sde, continuous: bool):
  """Times where a discretely conditioned score (continuous=False: step index
  floor(t (N - 1) / T)) jumps, shape (N - 2,); None for a continuous one."""
  if continuous:
    return None
  return np.arange(1, sde.N - 1) * sde.T / (sde.N - 1)


def _flow(sde, solver: ODESolver, continuous: bool):
  """flow(score_fn, x, t0, t1) -> (x(t1), nfe): the probability-flow ODE solved for each sample of
  x (B, ...) alone from t0 to t1 (either direction); nfe (B,)."""
  jump_ts = score_jump_times(sde, continuous)

  def flow(score_fn, x, t0, t1):
    drift = probability_flow_drift(sde, score_fn)
    return jax.vmap(lambda y: solver.solve(lambda t, y, _: drift(y, t), y, t0, t1,
                                           jump_ts=jump_ts))(x)

  return flow


def get_flow_maps(sde, solver: ODESolver = ODESolver(), eps: float = 1e-3,
                  continuous: bool = True):
  """encode(score_fn, x) -> (z, nfe) solves the ODE from eps to T, decode(score_fn, z) -> (x, nfe)
  from T back to eps; x, z of shape (B, ...), nfe (B,). The two maps are inverse to each other
  up to the solver's tolerance. `continuous=False` declares a score conditioned on discrete
  steps, piecewise constant in t: the adaptive solvers then step to each jump."""
  sde.check_eps(eps)
  flow = _flow(sde, solver, continuous)
  return (lambda score_fn, x: flow(score_fn, x, eps, sde.T),
          lambda score_fn, z: flow(score_fn, z, sde.T, eps))


def get_ode_sampler(sde, solver: ODESolver = ODESolver(), *, noise_removal: bool = True,
                    eps: float = 1e-3, continuous: bool = True, t_start=None):
  """Returns sample(key, score_fn, shape, first_index=0, *, x_start=None) -> (samples, nfe (B,)).

  Sample k starts from a prior draw with key fold_in(key, k) and is decoded through the
  probability-flow ODE from T to eps. With `noise_removal`, a last noise-free reverse-diffusion
  step at eps denoises it (one more score evaluation), as in the PC sampler; it is kept for the
  rectified flow, where for eps <= T/N it is the step from eps to 0, x - eps (1 - eps) v(x, eps):
  Tweedie's E[x0 | x] = x - eps v up to O(eps^2). `continuous`: see
  `get_flow_maps`. t_start (None: T): the solve starts at t_start from x_start, the state there
  (None: the prior draws, only for t_start = T; see sampling.start).
  """
  sde.check_eps(eps)
  t_start = start.start_time(sde, t_start, eps)
  flow = _flow(sde, solver, continuous)

  def sample(key, score_fn, shape, first_index=0, *, x_start=None):
    keys = streams.sample_keys(key, first_index, shape[0])
    x, nfe = flow(score_fn, start.initial_state(sde, keys, shape, x_start, t_start), t_start, eps)
    if noise_removal:  # the noise-free reverse-diffusion step at eps (paper, Eq. 46)
      rev_f, _ = sde.reverse(score_fn).discretize(x, jnp.full(shape[0], eps))
      x, nfe = x - rev_f, nfe + 1
    return x, nfe

  return sample
