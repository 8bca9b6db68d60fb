"""Forward SDEs of Song et al. (2021), their discretizations and their reverse-time processes,
and the rectified-flow path (Liu et al. 2023) as an SDE with the same marginals.

Every SDE here has the form dx = f(x, t) dt + g(t) dw on t in [0, T] (paper, Eq. 5). Methods are
pure jnp functions of a batch: `x` has shape (B, ...) and `t` has shape (B,). Per-sample scalars
(diffusion, std, step sizes) are returned with shape (B,) and broadcast with `expand_to`.

Discrete grids: an SDE with N steps has noise levels indexed i = 0..N-1, with i = 0 the smallest
noise; a time t maps to index floor(t (N - 1) / T) (`timestep_index`), the mapping the official
implementation uses for its discretizations and for discretely trained models.

SDEs are immutable and built with keywords, e.g. VPSDE(beta_min=0.1, beta_max=20.0, N=1000).
"""
import abc
import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from score_sde import config_checks

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def expand_to(v: jax.Array, x: jax.Array) -> jax.Array:
  """Reshapes per-sample values `v` of shape (B,) to (B, 1, ..., 1) so they broadcast with x."""
  return jnp.reshape(v, jnp.shape(v) + (1,) * (x.ndim - jnp.ndim(v)))


def _standard_normal_logp(z: jax.Array, scale: float) -> jax.Array:
  """log N(z; 0, scale^2 I) summed over all but the batch axis; returns shape (B,)."""
  dim = np.prod(z.shape[1:])
  sq_norm = jnp.sum(jnp.square(z).reshape(z.shape[0], -1), axis=-1)
  return -0.5 * dim * np.log(2 * np.pi * scale**2) - sq_norm / (2 * scale**2)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SDE(abc.ABC):
  """Base class. `N` is the number of discretization steps; the time horizon is `T` = 1."""

  N: int

  @property
  def T(self) -> float:
    return 1.0

  @abc.abstractmethod
  def sde(self, x, t):
    """Returns the drift f(x, t), shape (B, ...), and the diffusion g(t), shape (B,)."""

  @abc.abstractmethod
  def marginal_prob(self, x, t):
    """Mean (B, ...) and std (B,) of the perturbation kernel p_0t(x(t) | x(0) = x)."""

  @abc.abstractmethod
  def prior_sampling(self, key, shape):
    """Draws from the prior p_T, an array of `shape`."""

  @abc.abstractmethod
  def prior_logp(self, z):
    """log p_T(z) in nats, summed over each sample; shape (B,)."""

  @abc.abstractmethod
  def transition(self, t):
    """The Gaussian step x_i = a_i x_{i-1} + G_i z of the discretization ending at time t:
    returns a_i and G_i, each shape (B,)."""

  def discretize(self, x, t):
    """One forward step x_i = x_{i-1} + f_i + G_i z ending at time t: f_i = (a_i - 1) x, and
    G_i (B,)."""
    a, G = self.transition(t)
    return expand_to(a - 1.0, x) * x, G

  def check_eps(self, eps: float) -> None:
    """Refuses a smallest time `eps` outside (0, T)."""
    if not 0 < eps < self.T:
      raise ValueError(f'eps = {eps} must lie in (0, T = {self.T}).')

  @property
  @abc.abstractmethod
  def alphas(self) -> np.ndarray:
    """Per-step signal retention alpha_i of the discretization, shape (N,); the Langevin step
    size of the correctors is scaled by it (alpha_i = 1 - beta_i for DDPM, 1 for SMLD)."""

  def timestep_index(self, t):
    """Index i in [0, N-1] of the discrete step at time t (int32, shape of t)."""
    index = jnp.floor(t * (self.N - 1) / self.T).astype(jnp.int32)
    return jnp.clip(index, 0, self.N - 1)

  def alpha(self, t):
    """`alphas` at the step of time t; shape (B,)."""
    return jnp.asarray(self.alphas, jnp.float32)[self.timestep_index(t)]

  def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
    """The reverse-time SDE (Eq. 6), or the probability-flow ODE (Eq. 13) if `probability_flow`."""
    return ReverseSDE(self, score_fn, probability_flow)


@dataclasses.dataclass(frozen=True)
class ReverseSDE:
  """dx = [f(x, t) - c g(t)^2 score(x, t)] dt + g(t) dw_bar, with c = 1 (SDE) or 1/2 (ODE, no
  noise).

  Time runs backwards: a step from t to t - dt subtracts the drift times dt.
  """

  forward: SDE
  score_fn: ScoreFn
  probability_flow: bool = False

  @property
  def N(self) -> int:
    return self.forward.N

  @property
  def T(self) -> float:
    return self.forward.T

  @property
  def _score_coeff(self) -> float:
    return 0.5 if self.probability_flow else 1.0

  def sde(self, x, t):
    """Reverse drift (B, ...) and diffusion (B,); the diffusion is zero for the ODE."""
    drift, diffusion = self.forward.sde(x, t)
    drift = drift - expand_to(diffusion**2, x) * self.score_fn(x, t) * self._score_coeff
    if self.probability_flow:
      diffusion = jnp.zeros_like(diffusion)
    return drift, diffusion

  def discretize(self, x, t):
    """Reverse of `forward.discretize`: x_i = x_{i+1} - rev_f + rev_G z (Eq. 46)."""
    f, G = self.forward.discretize(x, t)
    rev_f = f - expand_to(G**2, x) * self.score_fn(x, t) * self._score_coeff
    rev_G = jnp.zeros_like(G) if self.probability_flow else G
    return rev_f, rev_G


BETA_SCHEDULES = ('linear', 'scaled_linear', 'cosine')
COSINE_S = 0.008  # offset s of the cosine schedule (Nichol & Dhariwal 2021, Eq. 17)
COSINE_BETA_MAX = 999.0  # its continuous beta(u) at the end of the horizon (DPM-Solver's cut)
COSINE_BETA_CAP = 0.999  # its largest discrete beta_i (Nichol & Dhariwal 2021; diffusers)


def _array_module(t):
  """jnp for jax arrays (traced ones included), numpy otherwise: the schedules serve the jitted
  samplers and the float64 numpy coefficients of sampling.grid alike."""
  return jnp if isinstance(t, jax.Array) else np


def _cosine_angle(u):
  """(u + s) / (1 + s) pi / 2: f(u) = cos(angle)^2 is the cosine schedule's alphabar (Eq. 17)."""
  return (u + COSINE_S) / (1.0 + COSINE_S) * (math.pi / 2)


def _cosine_f(u):
  """f(u) = cos((u + s) / (1 + s) pi / 2)^2 of the cosine schedule, u in [0, 1]; numpy."""
  return np.cos(_cosine_angle(u)) ** 2


# The u in [0, 1) where the continuous cosine beta(u) = pi tan(angle(u)) / (1 + s) reaches
# COSINE_BETA_MAX: 0.99800 (DPM-Solver's NoiseScheduleVP('cosine').cosine_t_max; the T = 0.9946
# that NoiseScheduleVP integrates to is a separate, hand-picked end time).
COSINE_U_MAX = 2.0 * (1.0 + COSINE_S) / math.pi * math.atan(
    COSINE_BETA_MAX * (1.0 + COSINE_S) / math.pi) - COSINE_S


@dataclasses.dataclass(frozen=True, kw_only=True)
class _BetaScheduleSDE(SDE):
  """What VP and sub-VP share: a noise rate beta(t) set by `beta_schedule`, the drift -beta(t)/2 x,
  the mean scale exp(lmc(t)) with lmc(t) = -1/2 int_0^t beta (Eq. 29), and the standard normal
  prior. The schedules:

  'linear' (default; DDPM, Song et al. 2021): beta(t) = beta_min + t (beta_max - beta_min).
  'scaled_linear' (LDM / Stable Diffusion): beta(t) = (sqrt(beta_min) + t (sqrt(beta_max) -
      sqrt(beta_min)))^2; Stable Diffusion's is beta_min = 0.85, beta_max = 12, N = 1000.
  'cosine' (Nichol & Dhariwal 2021, Eq. 17): alpha(t)^2 = f(u_max t) / f(0) with
      f(u) = cos((u + s) / (1 + s) pi / 2)^2, s = 0.008, and its exact rate
      beta(t) = -d log alpha(t)^2 / dt = u_max pi / (1 + s) tan((u_max t + s) / (1 + s) pi / 2).
      u_max = 0.99800 is where the rate per unit of u reaches 999 (DPM-Solver's
      NoiseScheduleVP('cosine') cosine_t_max), so beta(T) = 999 u_max and alpha(T) = 0.0031.
      beta_min and beta_max are unused.

  Methods take numpy arrays (computed in float64) and jax arrays (traced, float32) alike.
  """

  beta_min: float = 0.1
  beta_max: float = 20.0
  N: int = 1000
  beta_schedule: str = 'linear'

  def __post_init__(self):
    if self.beta_schedule not in BETA_SCHEDULES:
      raise ValueError(f'beta_schedule = {self.beta_schedule!r} is not supported; allowed: '
                       f'{list(BETA_SCHEDULES)}.')

  def _root_betas(self):
    """sqrt(beta_min) and sqrt(beta_max) - sqrt(beta_min) of 'scaled_linear'."""
    return math.sqrt(self.beta_min), math.sqrt(self.beta_max) - math.sqrt(self.beta_min)

  def beta(self, t):
    """beta(t) of the schedule, like t."""
    if self.beta_schedule == 'linear':
      return self.beta_min + t * (self.beta_max - self.beta_min)
    if self.beta_schedule == 'scaled_linear':
      root, slope = self._root_betas()
      return (root + t * slope)**2
    tangent = _array_module(t).tan(_cosine_angle(COSINE_U_MAX * t))
    return COSINE_U_MAX * math.pi / (1.0 + COSINE_S) * tangent

  def log_mean_coeff(self, t):
    """log of the mean scale: -1/2 int_0^t beta(s) ds (Eq. 29) in closed form, like t."""
    if self.beta_schedule == 'linear':
      return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
    if self.beta_schedule == 'scaled_linear':  # int_0^t (r + c u)^2 du, r, c = _root_betas()
      root, slope = self._root_betas()
      return -0.5 * t * (root**2 + t * (root * slope + t * slope**2 / 3.0))
    xp = _array_module(t)
    return xp.log(xp.cos(_cosine_angle(COSINE_U_MAX * t))) - math.log(math.cos(_cosine_angle(0.0)))

  def prior_sampling(self, key, shape):
    return jax.random.normal(key, shape)

  def prior_logp(self, z):
    return _standard_normal_logp(z, 1.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class VPSDE(_BetaScheduleSDE):
  """Variance preserving SDE (Eq. 11): dx = -beta(t)/2 x dt + sqrt(beta(t)) dw.
  Its discretization is DDPM's Markov chain (`discrete_betas`)."""

  @functools.cached_property
  def discrete_betas(self) -> np.ndarray:
    """The chain's betas, shape (N,), float64. 'linear' and 'scaled_linear': beta_i = beta(t_i) / N
    at t_i = i T / (N - 1) (DDPM); for 'scaled_linear' that is linspace(sqrt(beta_min / N),
    sqrt(beta_max / N), N)^2, diffusers' betas for beta_start = beta_min / N, beta_end =
    beta_max / N. 'cosine': beta_i = min(1 - f((i + 1) / N) / f(i / N), 0.999) (Nichol & Dhariwal
    2021, Sec. 3.2; diffusers' 'squaredcos_cap_v2'), so alphabar_i = f((i + 1) / N) / f(0) until
    the cap. That chain sits at u = (i + 1) / N of f where the continuous kernel sits at u_max t_i.
    With N = 1000 every schedule's |sqrt(alphabar_i) - alpha(t_i)| stays below 0.004."""
    if self.beta_schedule == 'linear':
      return np.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N)
    if self.beta_schedule == 'scaled_linear':
      return np.linspace(np.sqrt(self.beta_min / self.N), np.sqrt(self.beta_max / self.N),
                         self.N)**2
    u = np.arange(self.N + 1) / self.N
    f = _cosine_f(u)
    return np.minimum(1.0 - f[1:] / f[:-1], COSINE_BETA_CAP)

  @property
  def alphas(self) -> np.ndarray:
    return 1.0 - self.discrete_betas

  @functools.cached_property
  def alphas_cumprod(self) -> np.ndarray:
    return np.cumprod(self.alphas)

  @property
  def sqrt_alphas_cumprod(self) -> np.ndarray:
    return np.sqrt(self.alphas_cumprod)

  @property
  def sqrt_1m_alphas_cumprod(self) -> np.ndarray:
    return np.sqrt(1.0 - self.alphas_cumprod)

  def sde(self, x, t):
    beta_t = self.beta(t)
    return -0.5 * expand_to(beta_t, x) * x, jnp.sqrt(beta_t)

  def marginal_prob(self, x, t):
    lmc = self.log_mean_coeff(t)
    return expand_to(jnp.exp(lmc), x) * x, jnp.sqrt(1.0 - jnp.exp(2.0 * lmc))

  def transition(self, t):
    """DDPM: x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z (Eq. 47)."""
    beta = jnp.asarray(self.discrete_betas, jnp.float32)[self.timestep_index(t)]
    return jnp.sqrt(1.0 - beta), jnp.sqrt(beta)


@dataclasses.dataclass(frozen=True, kw_only=True)
class subVPSDE(_BetaScheduleSDE):
  """Sub-VP SDE (Eq. 12): dx = -beta(t)/2 x dt + sqrt(beta(t) (1 - exp(-2 int_0^t beta))) dw.

  Its marginal std is 1 - exp(-int_0^t beta) (Eq. 30), never above the VP one.
  """

  def variance(self, t):
    """Marginal variance of x(t) given x(0): (1 - exp(-int_0^t beta))^2, shape of t."""
    return jnp.square(1.0 - jnp.exp(2.0 * self.log_mean_coeff(t)))

  def step_start(self, t):
    """Start s = max(t - T/N, 0) of the discrete step that ends at t."""
    return jnp.maximum(t - self.T / self.N, 0.0)

  @functools.cached_property
  def alphas(self) -> np.ndarray:
    """Squared mean scale of each step, exp(-int_{t_i - T/N}^{t_i} beta), at t_i = i T / (N - 1)."""
    t = np.linspace(0.0, self.T, self.N)
    s = np.maximum(t - self.T / self.N, 0.0)
    return np.exp(2.0 * (self.log_mean_coeff(t) - self.log_mean_coeff(s)))

  def sde(self, x, t):
    beta_t = self.beta(t)
    if self.beta_schedule == 'linear':  # the official expression, kept bit for bit under jit
      discount = 1.0 - jnp.exp(-2.0 * self.beta_min * t - (self.beta_max - self.beta_min) * t**2)
    else:
      discount = 1.0 - jnp.exp(4.0 * self.log_mean_coeff(t))  # 1 - exp(-2 int_0^t beta)
    return -0.5 * expand_to(beta_t, x) * x, jnp.sqrt(beta_t * discount)

  def marginal_prob(self, x, t):
    lmc = self.log_mean_coeff(t)
    return expand_to(jnp.exp(lmc), x) * x, 1.0 - jnp.exp(2.0 * lmc)

  def transition(self, t):
    """Exact Gaussian transition x(t) = a x(s) + G z over the step [s, t], s = max(t - T/N, 0):
    a = exp(lmc(t) - lmc(s)) and G^2 = v(t) - a^2 v(s), v the marginal variance; each (B,).

    The chain's marginals equal the SDE's at every step, and (a - 1) x, G^2 tend to the drift
    and g^2 times T/N as N grows. (The official implementation has no subVP discretization.)
    """
    s = self.step_start(t)
    a = jnp.exp(self.log_mean_coeff(t) - self.log_mean_coeff(s))
    return a, jnp.sqrt(jnp.maximum(self.variance(t) - a**2 * self.variance(s), 0.0))


@dataclasses.dataclass(frozen=True, kw_only=True)
class VESDE(SDE):
  """Variance exploding SDE (Eq. 9): dx = sqrt(d sigma^2(t)/dt) dw,
  sigma(t) = sigma_min (sigma_max / sigma_min)^t. Its discretization is SMLD's (NCSN) chain.

  `marginal_prob` returns std = sigma(t), as the official implementation does, rather than the
  exact sqrt(sigma(t)^2 - sigma_min^2): trained checkpoints were conditioned on sigma(t), so this
  keeps them correct. The difference is below sigma_min.
  """

  sigma_min: float = 0.01
  sigma_max: float = 50.0
  N: int = 1000

  def sigma(self, t):
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

  @functools.cached_property
  def discrete_sigmas(self) -> np.ndarray:
    """Geometric noise levels sigma_min..sigma_max, ascending, shape (N,), float64."""
    return np.exp(np.linspace(np.log(self.sigma_min), np.log(self.sigma_max), self.N))

  @property
  def alphas(self) -> np.ndarray:
    return np.ones(self.N)

  def sde(self, x, t):
    diffusion = self.sigma(t) * np.sqrt(2 * (np.log(self.sigma_max) - np.log(self.sigma_min)))
    return jnp.zeros_like(x), diffusion

  def marginal_prob(self, x, t):
    return x, self.sigma(t)

  def prior_sampling(self, key, shape):
    return self.sigma_max * jax.random.normal(key, shape)

  def prior_logp(self, z):
    return _standard_normal_logp(z, self.sigma_max)

  def step_sigmas(self, t):
    """sigma_i and sigma_{i-1} (0 for i = 0) of the discrete step ending at t, each (B,)."""
    index = self.timestep_index(t)
    sigmas = jnp.asarray(self.discrete_sigmas, jnp.float32)
    return sigmas[index], jnp.where(index == 0, 0.0, sigmas[jnp.maximum(index - 1, 0)])

  def transition(self, t):
    """SMLD: x_i = x_{i-1} + sqrt(sigma_i^2 - sigma_{i-1}^2) z, with sigma_{-1} = 0 (Eq. 45)."""
    sigma, previous = self.step_sigmas(t)
    return jnp.ones_like(sigma), jnp.sqrt(sigma**2 - previous**2)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RectifiedFlow(SDE):
  """The linear path of rectified flow (Liu et al. 2023, Eq. 1), which is also flow matching's
  optimal-transport path with sigma_min = 0 (Lipman et al. 2023, Sec. 4.1, there in reversed
  time): x(t) = (1 - t) x(0) + t z on t in [0, T = 1]. The kernel has mean scale alpha = 1 - t and
  std sigma = t, and the prior N(0, I) is p_T exactly.

  The SDE with these marginals has f = (d log alpha / dt) x = -x / (1 - t) and g^2 = d sigma^2/dt
  - 2 f sigma^2 = 2 t / (1 - t) (the moment equations of a linear SDE, d alpha / dt = f alpha and
  d sigma^2 / dt = 2 f sigma^2 + g^2), so its reverse SDE and probability-flow ODE (Eq. 6, 13)
  hold for t < T. Both blow up at T, where alpha = 0 and the score -x carries no information: a
  velocity model (score_sde.flows) gives the ODE's drift directly, exact at T as well, and the
  ODE sampler and the likelihood use it. The reverse-SDE samplers ('pc') and the grid samplers
  (whose data estimate divides by alpha(T) = 0) do not run from T.
  """

  N: int = 1000

  def sde(self, x, t):
    """Drift -x / (1 - t) (B, ...) and diffusion sqrt(2 t / (1 - t)) (B,); infinite at t = T."""
    return -x / expand_to(1.0 - t, x), jnp.sqrt(2.0 * t / (1.0 - t))

  def marginal_prob(self, x, t):
    return expand_to(1.0 - t, x) * x, t

  def prior_sampling(self, key, shape):
    return jax.random.normal(key, shape)

  def prior_logp(self, z):
    return _standard_normal_logp(z, 1.0)

  def step_start(self, t):
    """Start s = max(t - T/N, 0) of the discrete step that ends at t."""
    return _array_module(t).maximum(t - self.T / self.N, 0.0)

  def _step(self, t):
    """a = alpha(t) / alpha(s) and G^2 = sigma(t)^2 - a^2 sigma(s)^2 of the step [s, t]."""
    s = self.step_start(t)
    a = (1.0 - t) / (1.0 - s)
    return a, _array_module(t).maximum(t**2 - a**2 * s**2, 0.0)

  @functools.cached_property
  def alphas(self) -> np.ndarray:
    """Squared mean scale a_i^2 of each step, at t_i = i T / (N - 1) (0 for the step to T)."""
    return self._step(np.linspace(0.0, self.T, self.N))[0]**2

  def transition(self, t):
    """Exact Gaussian transition x(t) = a x(s) + G z over the step [s, t], s = max(t - T/N, 0):
    a = (1 - t) / (1 - s), G^2 = t^2 - a^2 s^2; each (B,). The chain's marginals equal the
    kernel's at every step; the step to T forgets x(s) (a = 0, G = 1)."""
    a, variance = self._step(t)
    return a, jnp.sqrt(variance)


SDES = {'vpsde': VPSDE, 'subvpsde': subVPSDE, 'vesde': VESDE, 'rectified_flow': RectifiedFlow}


def get_sde(config) -> SDE:
  """Builds the SDE named by `config.training.sde` from the `config.model` noise parameters
  (model.beta_schedule: VP / sub-VP only; None means 'linear'); 'rectified_flow' reads only
  model.num_scales."""
  name = config_checks.choice(config, 'training.sde', SDES)
  num_scales = config_checks.positive_int(config, 'model.num_scales')
  schedule = config.model.get('beta_schedule')
  if schedule is not None:
    config_checks.choice(config, 'model.beta_schedule', BETA_SCHEDULES)
    if name not in ('vpsde', 'subvpsde'):
      raise ValueError(f'Config field model.beta_schedule = {schedule!r} is for the VP and sub-VP '
                       f'SDEs; with training.sde = {name!r} set it to None.')
  if name == 'rectified_flow':
    return RectifiedFlow(N=num_scales)
  if name == 'vesde':
    return VESDE(sigma_min=config_checks.positive_float(config, 'model.sigma_min'),
                 sigma_max=config_checks.positive_float(config, 'model.sigma_max'), N=num_scales)
  return SDES[name](beta_min=config_checks.positive_float(config, 'model.beta_min'),
                    beta_max=config_checks.positive_float(config, 'model.beta_max'), N=num_scales,
                    beta_schedule=schedule or 'linear')
