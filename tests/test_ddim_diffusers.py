"""The 'ddim_diffusers' sampler against diffusers' DDIMScheduler itself (tests/data/
diffusers_reference.json, made by scripts/diffusers_reference.py): the same timesteps, img2img's
kept timesteps, and whole trajectories driven by the same closed-form epsilon (Gaussian data),
with eta > 0's noise replayed; then its own noise streams and its samples on the mixture oracle.
"""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import sampling, sweep
from score_sde import sde as sde_lib
from score_sde.sampling import ddim_diffusers
from tests import oracle
from tests.helpers import tiny_config

REFERENCE = json.loads((pathlib.Path(__file__).parent / 'data' /
                        'diffusers_reference.json').read_text())
SDES = {'linear': sde_lib.VPSDE(),
        'scaled_linear': sde_lib.VPSDE(beta_min=0.85, beta_max=12.0, beta_schedule='scaled_linear'),
        'squaredcos_cap_v2': sde_lib.VPSDE(beta_schedule='cosine')}
SD = SDES['scaled_linear']


def _ids(cases, *fields):
  return ['-'.join(str(case[f]) for f in fields) for case in cases]


@pytest.mark.parametrize('case', REFERENCE['timesteps'],
                         ids=_ids(REFERENCE['timesteps'], 'num_steps', 'timestep_spacing',
                                  'steps_offset'))
def test_timesteps_are_diffusers(case):
  timesteps = ddim_diffusers.diffusers_timesteps(1000, case['num_steps'], case['timestep_spacing'],
                                                 case['steps_offset'])
  np.testing.assert_array_equal(timesteps, case['timesteps'])


@pytest.mark.parametrize('case', REFERENCE['img2img'],
                         ids=_ids(REFERENCE['img2img'], 'num_steps', 'strength'))
def test_strength_keeps_the_timesteps_of_img2img(case):
  options = dict(timestep_spacing=case['timestep_spacing'], steps_offset=case['steps_offset'])
  t_start = ddim_diffusers.strength_start_time(SD, case['num_steps'], case['strength'], **options)
  timesteps, first = ddim_diffusers.kept_timesteps(SD, case['num_steps'], t_start=t_start,
                                                   **options)
  np.testing.assert_array_equal(timesteps[first:], case['timesteps'])


def gaussian_score_fn(sde):
  """The exact score of N(mean, diag(std^2)) data on the chain's step of t: -(x - sqrt(a) mean) /
  (a std^2 + 1 - a), a = alphas_cumprod at sde.timestep_index(t)."""
  mean, std = (jnp.asarray(REFERENCE['gaussian'][k], jnp.float32) for k in ('mean', 'std'))
  alphas_cumprod = jnp.asarray(sde.alphas_cumprod, jnp.float32)

  def score_fn(x, t):
    a = alphas_cumprod[sde.timestep_index(t)][:, None]
    return -(x - jnp.sqrt(a) * mean) / (a * std**2 + 1.0 - a)

  return score_fn


def recorder(states):
  """A `project` that changes nothing and records each (state, time) it is given, in order."""

  def project(keys, x, t):
    jax.debug.callback(lambda x, t: states.append((np.asarray(x), np.asarray(t))), x, t,
                       ordered=True)
    return x

  return project


@pytest.mark.parametrize('case', REFERENCE['trajectories'],
                         ids=_ids(REFERENCE['trajectories'], 'schedule', 'num_steps', 'eta',
                                  'strength'))
def test_trajectory_is_diffusers(case, monkeypatch):
  sde = SDES[case['schedule']]
  options = dict(timestep_spacing=case['timestep_spacing'], steps_offset=case['steps_offset'])
  t_start = None
  if case['strength'] is not None:
    t_start = ddim_diffusers.strength_start_time(sde, case['num_steps'], case['strength'],
                                                 **options)
  if case['eta'] > 0:  # replay diffusers' variance_noise: step i of the run draws noise[i]
    noise = jnp.asarray(case['step_noise'], jnp.float32)
    first = len(ddim_diffusers.diffusers_timesteps(sde.N, case['num_steps'], **options)) - len(
        case['timesteps'])
    monkeypatch.setattr(ddim_diffusers, '_step_noise', lambda keys, i, x: noise[i - first])
  sample = ddim_diffusers.get_ddim_diffusers_sampler(
      sde, num_steps=case['num_steps'], eta=case['eta'], set_alpha_to_one=case['set_alpha_to_one'],
      t_start=t_start, **options)
  states = []
  x, nfe = jax.jit(lambda x_start: sample(jax.random.PRNGKey(0), gaussian_score_fn(sde), (4, 3),
                                          x_start=x_start, project=recorder(states)))(
      jnp.asarray(case['states'][0], jnp.float32))
  jax.effects_barrier()
  assert nfe == len(case['timesteps']) == len(states) - 1
  np.testing.assert_allclose(np.stack([s for s, _ in states]), case['states'], rtol=0, atol=1e-5)
  np.testing.assert_array_equal(x, states[-1][0])
  # The time each state has: its timestep k (t = k T / (N - 1)), diffusers' prev = k - N // n
  # after each step (0 after the last).
  timesteps = np.array(case['timesteps'])
  steps = np.concatenate([timesteps[:1], np.maximum(timesteps - 1000 // case['num_steps'], 0)])
  np.testing.assert_allclose([t[0] for _, t in states], steps / 999, rtol=1e-6)


def test_eta_noise_is_per_sample():
  """Sample k draws its prior and eta noise from fold_in(key, k): the same in any batch."""
  def run(eta, batch_size, first_index):
    sample = ddim_diffusers.get_ddim_diffusers_sampler(SD, num_steps=10, eta=eta)
    return jax.jit(lambda key: sample(key, gaussian_score_fn(SD), (batch_size, 3),
                                      first_index)[0])(jax.random.PRNGKey(1))

  batch = run(1.0, 6, 10)
  np.testing.assert_allclose(run(1.0, 1, 14)[0], batch[4], rtol=1e-6, atol=1e-6)
  assert np.max(np.abs(run(0.0, 6, 10) - batch)) > 0.1


@pytest.mark.parametrize('eta,steps', [(0.0, 50), (1.0, 100)])
def test_samples_follow_the_mixture(eta, steps):
  """The mixture's exact score on SD's chain, from exact samples of its step-981 marginal (SD's
  chain ends at alphabar_999 = 0.0047, far from the prior's 0); the run ends at step 0, whose
  marginal is the mixture perturbed by sqrt(alphabar_0), sqrt(1 - alphabar_0)."""
  gmm, kernel = oracle.mixture(2), oracle.DiscreteKernel(sde=SD)
  first = ddim_diffusers.diffusers_timesteps(SD.N, steps)[0]
  t_start = first / 999
  # The kernel of step k, asked inside the step, at (k + 1/2) / 999 (as the samplers ask scores).
  draw = jax.jit(gmm.at_time(kernel, (first + 0.5) / 999).sample, static_argnums=1)
  x_start = draw(jax.random.PRNGKey(2), 4000)[0]
  sample = ddim_diffusers.get_ddim_diffusers_sampler(SD, num_steps=steps, eta=eta,
                                                     t_start=t_start)
  x, nfe = jax.jit(lambda key: sample(key, gmm.score_fn(kernel), (4000, 2), x_start=x_start))(
      jax.random.PRNGKey(3))
  assert nfe == steps
  oracle.assert_follows_mixture(x, gmm.at_time(kernel, 0.0))


def test_config_builds_the_sampler():
  config = tiny_config()
  config.sampling.update(method='ddim_diffusers', steps=10, eta=0.0, timestep_spacing='trailing',
                         steps_offset=0, set_alpha_to_one=True)
  sample = sampling.get_sampler(config, SD, continuous=False, t_start=0.5)
  x, nfe = sample(jax.random.PRNGKey(0), gaussian_score_fn(SD), (4, 3), x_start=jnp.zeros((4, 3)))
  assert nfe == 5 and np.all(np.isfinite(x))  # trailing: 999, 899, ..., 99; kept 499 .. 99


@pytest.mark.parametrize('fields,continuous,message', [
    ({}, True, "'ddim_diffusers' runs a discretely trained VP model on its steps"),
    ({'nfe': 10}, False, "sampling.nfe = 10: sampling.method 'ddim_diffusers' takes "
                         'sampling.steps'),
    ({'steps_offset': -1}, False, 'sampling.steps_offset = -1 must be an integer >= 0'),
    ({'timestep_spacing': 'uniform'}, False, "sampling.timestep_spacing = 'uniform' is not "
                                             'supported'),
    ({'eta': 2.0}, False, r'sampling.eta = 2.0 must lie in \[0, 1\]'),
])
def test_config_errors(fields, continuous, message):
  config = tiny_config()
  config.sampling.update(method='ddim_diffusers', steps=10)
  config.sampling.update(fields)
  with pytest.raises(ValueError, match=message):
    sampling.get_sampler(config, SD, continuous=continuous)


def test_refusals():
  with pytest.raises(ValueError, match='runs on the discrete chain of a VPSDE .* got subVPSDE'):
    ddim_diffusers.get_ddim_diffusers_sampler(sde_lib.subVPSDE(), num_steps=10)
  with pytest.raises(ValueError, match=r'num_steps = 1001 must be an integer in \[1, 1000\]'):
    ddim_diffusers.get_ddim_diffusers_sampler(SD, num_steps=1001)
  with pytest.raises(ValueError, match=r"'leading' timesteps for num_steps = 1000 and "
                                       r"steps_offset = 1 are 1000 steps 1000..1, not 1000 steps "
                                       r"of the chain's 0..999"):
    ddim_diffusers.get_ddim_diffusers_sampler(SD, num_steps=1000)
  with pytest.raises(ValueError, match=r"'trailing' timesteps for num_steps = 61 and "
                                       r'steps_offset = 1 are 62 steps 999..-1'):
    ddim_diffusers.diffusers_timesteps(1000, 61, 'trailing')
  with pytest.raises(ValueError, match='t_start = 0.0005 lies below the last timestep 1'):
    ddim_diffusers.get_ddim_diffusers_sampler(SD, num_steps=50, t_start=0.0005)
  with pytest.raises(ValueError, match=r'strength = 0.01 keeps none of 50 timesteps'):
    ddim_diffusers.strength_start_time(SD, 50, 0.01)
  with pytest.raises(ValueError, match=r'strength = 1.5 must lie in \(0, 1\]'):
    ddim_diffusers.strength_start_time(SD, 50, 1.5)
  sample = ddim_diffusers.get_ddim_diffusers_sampler(SD, num_steps=50, t_start=0.5)
  with pytest.raises(ValueError, match='needs x_start'):
    sample(jax.random.PRNGKey(0), gaussian_score_fn(SD), (4, 3))


def test_sweep_builds_it():
  sample = sweep.build_sampler(SD, 'ddim_diffusers', continuous=False, steps=10,
                               timestep_spacing='trailing')
  x, nfe = sample(jax.random.PRNGKey(0), gaussian_score_fn(SD), (4, 3))
  assert nfe == 10 and np.all(np.isfinite(x))
  with pytest.raises(ValueError, match="'ddim_diffusers' runs a discrete model"):
    sweep.build_sampler(SD, 'ddim_diffusers', steps=10)
