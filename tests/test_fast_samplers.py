"""DDIM, DPM-Solver++ and EDM-Heun on the Gaussian-mixture oracle (exact score), on VP, sub-VP and
VE: samples follow the mixture at the default budgets; the deterministic samplers converge to the
probability-flow ODE solution at their orders (DDIM 1, DPM-Solver++ 2M / 2S and Heun 2, 3M / 3S 3),
measured as the slope of the error against the step size; discrete models run on their own steps;
classifier-free guidance at scales 0 and 1 is the unconditional and the conditional score."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import sampling
from score_sde import sde as sde_lib
from score_sde.sampling import grid, guidance, start
from tests import oracle
from tests.helpers import tiny_config

NUM_SAMPLES = 4000
GMM = oracle.mixture(2)

# Default budgets of the tests (NFE, with the final denoising step): enough for 4,000 samples to
# follow the mixture within sampling error (the NFE that reach PC's error: scripts/benchmark.py).
SAMPLERS = {
    'ddim': lambda sde, eps: sampling.get_ddim_sampler(sde, nfe=100, eps=eps),
    'ddim_eta1': lambda sde, eps: sampling.get_ddim_sampler(sde, nfe=200, eta=1.0, eps=eps),
    'dpm_2m': lambda sde, eps: sampling.get_dpm_solver_sampler(sde, nfe=50, eps=eps),
    'dpm_2s': lambda sde, eps: sampling.get_dpm_solver_sampler(sde, variant='2S', nfe=51,
                                                               eps=eps),
    'dpm_3s': lambda sde, eps: sampling.get_dpm_solver_sampler(sde, variant='3S', nfe=49,
                                                               eps=eps),
    'dpm_3m': lambda sde, eps: sampling.get_dpm_solver_sampler(sde, variant='3M', nfe=30,
                                                               schedule='quadratic', eps=eps),
    'edm': lambda sde, eps: sampling.get_edm_sampler(sde, nfe=51, eps=eps),
    'edm_churn': lambda sde, eps: sampling.get_edm_sampler(sde, nfe=101, s_churn=40.0, eps=eps),
}
EXPECTED_NFE = {'ddim': 100, 'ddim_eta1': 200, 'dpm_2m': 50, 'dpm_2s': 51, 'dpm_3s': 49,
                'dpm_3m': 30, 'edm': 51, 'edm_churn': 101}


@pytest.mark.parametrize('name', oracle.SDES)
@pytest.mark.parametrize('sampler', SAMPLERS)
def test_samples_follow_mixture(name, sampler):
  sde = oracle.SDES[name]
  sample = SAMPLERS[sampler](sde, oracle.EPS[name])
  samples, nfe = jax.jit(lambda key: sample(key, GMM.score_fn(sde), (NUM_SAMPLES, 2)))(
      jax.random.PRNGKey(0))
  assert nfe == EXPECTED_NFE[sampler]
  oracle.assert_follows_mixture(samples, GMM)


@functools.lru_cache(maxsize=None)
def ode_solution(name):
  """Prior draws 0..199 of key 1 carried to eps by an accurate Dopri5 solve of the PF-ODE."""
  sde = oracle.SDES[name]
  solver = sampling.ODESolver(rtol=1e-7, atol=1e-7)
  sample = sampling.get_ode_sampler(sde, solver, eps=oracle.EPS[name], noise_removal=False)
  return jax.jit(lambda key: sample(key, GMM.score_fn(sde), (200, 2)))(jax.random.PRNGKey(1))[0]


ORDERS = {  # sampler -> (builder, step counts, expected order)
    'ddim': (lambda sde, n, eps: sampling.get_ddim_sampler(sde, num_steps=n, eps=eps,
                                                           denoise=False), (40, 80, 160), 1),
    'dpm_2m': (lambda sde, n, eps: sampling.get_dpm_solver_sampler(
        sde, num_steps=n, eps=eps, denoise=False), (40, 80, 160), 2),
    'dpm_3m': (lambda sde, n, eps: sampling.get_dpm_solver_sampler(
        sde, variant='3M', num_steps=n, eps=eps, denoise=False), (40, 80, 160), 3),
    'dpm_2s': (lambda sde, n, eps: sampling.get_dpm_solver_sampler(
        sde, variant='2S', num_steps=n, eps=eps, denoise=False), (20, 40, 80), 2),
    'dpm_3s': (lambda sde, n, eps: sampling.get_dpm_solver_sampler(
        sde, variant='3S', num_steps=n, eps=eps, denoise=False), (10, 20, 40), 3),
    'edm_heun': (lambda sde, n, eps: sampling.get_edm_sampler(sde, num_steps=n, eps=eps,
                                                              denoise=False), (40, 80, 160), 2),
}


@pytest.mark.parametrize('name', oracle.SDES)
@pytest.mark.parametrize('sampler', ORDERS)
def test_convergence_order(name, sampler):
  """Median distance to the ODE solution from the same prior draws: its slope against the step
  size in log-log is the order (the median ignores the rare sample that a coarse solve sends
  to another component)."""
  build, step_counts, order = ORDERS[sampler]
  sde, reference = oracle.SDES[name], ode_solution(name)
  errors = []
  for n in step_counts:
    sample = build(sde, n, oracle.EPS[name])
    x, _ = jax.jit(lambda key: sample(key, GMM.score_fn(sde), (200, 2)))(jax.random.PRNGKey(1))
    errors.append(float(jnp.median(jnp.linalg.norm(x - reference, axis=-1))))
  slope = -np.polyfit(np.log(step_counts), np.log(errors), 1)[0]
  if order < 3:
    assert abs(slope - order) < 0.25, (errors, slope)
  else:  # still above 3 at these step counts, then at float32's floor
    assert order - 0.25 < slope < order + 0.75, (errors, slope)
  assert errors[-1] < 0.05, errors


def test_discrete_nodes_are_the_chain_steps():
  vp, ve = sde_lib.VPSDE(N=1000), sde_lib.VESDE(N=1000)
  for sde in (vp, ve):
    nodes = grid.time_grid(sde, 25, 1e-3, 'logsnr', continuous=False)
    index = np.asarray(sde.timestep_index(jnp.asarray(nodes.score_times, jnp.float32)))
    assert index[0] == 999 and index[-1] == 0 and np.all(np.diff(index) < 0)
    np.testing.assert_allclose(nodes.times, index / 999)
  np.testing.assert_allclose(grid.nodes_at(vp, [0.5], continuous=False).alphas,
                             np.sqrt(vp.alphas_cumprod[500]))
  np.testing.assert_allclose(grid.nodes_at(ve, [0.5], continuous=False).sigmas,
                             ve.discrete_sigmas[500])
  with pytest.raises(ValueError, match='num_steps = 1000 exceeds the 999 steps'):
    grid.time_grid(vp, 1000, 1e-3, continuous=False)


@pytest.mark.parametrize('sde', [sde_lib.VPSDE(N=200), sde_lib.VESDE(N=200)],
                         ids=['ddpm', 'smld'])
@pytest.mark.parametrize('method', ['ddim', 'dpm_2m', 'edm'])
def test_discrete_model_on_its_steps(sde, method):
  """The exact score of a discrete chain's marginals, sampled on its own steps."""
  score_fn = GMM.score_fn(oracle.DiscreteKernel(sde=sde))
  build = {'ddim': lambda: sampling.get_ddim_sampler(sde, num_steps=100, continuous=False),
           'dpm_2m': lambda: sampling.get_dpm_solver_sampler(sde, nfe=50, continuous=False),
           'edm': lambda: sampling.get_edm_sampler(sde, nfe=51, continuous=False)}[method]
  sample = build()
  samples, _ = jax.jit(lambda key: sample(key, score_fn, (NUM_SAMPLES, 2)))(
      jax.random.PRNGKey(2))
  oracle.assert_follows_mixture(samples, GMM)


def test_guidance_scales_zero_and_one_are_exact():
  sde = oracle.SDES['vp']
  class_score = GMM.class_score_fn(sde)
  x = jax.random.normal(jax.random.PRNGKey(3), (64, 2)) * 2
  t = jax.random.uniform(jax.random.PRNGKey(4), (64,), minval=1e-3, maxval=1.0)
  labels = jnp.arange(64) % 3
  unconditional = guidance.guided_score_fn(class_score, labels, 0.0, null_label=3)(x, t)
  conditional = guidance.guided_score_fn(class_score, labels, 1.0, null_label=3)(x, t)
  np.testing.assert_array_equal(unconditional, GMM.score(x, t, sde))
  np.testing.assert_array_equal(conditional, class_score(x, t, class_labels=labels))
  np.testing.assert_array_equal(guidance.guided_score_fn(class_score, labels, None, 3)(x, t),
                                conditional)
  for k in range(3):  # the conditional score is component k's own score
    np.testing.assert_allclose(conditional[labels == k],
                               GMM.component(k).score(x[labels == k], t[labels == k], sde),
                               rtol=1e-4, atol=1e-4)
  guided = guidance.guided_score_fn(class_score, labels, 3.0, null_label=3)(x, t)
  np.testing.assert_allclose(guided, 3.0 * conditional - 2.0 * unconditional, rtol=1e-5,
                             atol=1e-4)


@pytest.mark.parametrize('method', ['dpm_2m', 'edm', 'ode'])
def test_conditional_sampling_draws_the_class(method):
  """Guidance scale 1 with every sampler kind draws class 1's component; the ODE sampler (one
  sample at a time) takes one int label."""
  sde = oracle.SDES['vp']
  score_fn = guidance.guided_score_fn(GMM.class_score_fn(sde), 1, 1.0, null_label=3)
  sample = {'dpm_2m': lambda: sampling.get_dpm_solver_sampler(sde, nfe=50),
            'edm': lambda: sampling.get_edm_sampler(sde, nfe=51),
            'ode': lambda: sampling.get_ode_sampler(sde)}[method]()
  samples, _ = jax.jit(lambda key: sample(key, score_fn, (2000, 2)))(jax.random.PRNGKey(5))
  oracle.assert_follows_mixture(samples, GMM.component(1))


def test_guidance_refuses_mismatched_labels():
  score_fn = guidance.guided_score_fn(GMM.class_score_fn(oracle.SDES['vp']), jnp.arange(4), 1.0, 3)
  with pytest.raises(ValueError, match='4 conditions for a batch of 1'):
    score_fn(jnp.zeros((1, 2)), jnp.ones(1))


def test_same_prior_draws_as_the_pc_sampler():
  """With no steps between, every sampler starts from the PC sampler's prior draw of sample k."""
  sde = oracle.SDES['ve']
  keys = sampling.streams.sample_keys(jax.random.PRNGKey(6), 5, 3)
  expected = jax.vmap(lambda k: sde.prior_sampling(jax.random.fold_in(k, 0), (2,)))(keys)
  np.testing.assert_array_equal(start.prior_draws(sde, keys, (3, 2)), expected)


@pytest.mark.parametrize('method,fields', [('ddim', {'steps': 10, 'eta': 0.5}),
                                           ('dpm_solver', {'nfe': 13,
                                                           'dpm_solver_variant': '3S'}),
                                           ('edm', {'nfe': 11, 's_churn': 5.0, 's_max': 10.0})])
def test_config_builds_the_sampler(method, fields):
  config = tiny_config()
  config.sampling.method = method
  config.sampling.update(fields)
  sde = oracle.SDES['vp']
  sample = sampling.get_sampler(config, sde)
  samples, nfe = sample(jax.random.PRNGKey(0), GMM.score_fn(sde), (8, 2))
  assert samples.shape == (8, 2) and np.all(np.isfinite(samples))
  assert nfe == {'ddim': 11, 'dpm_solver': 13, 'edm': 11}[method]


@pytest.mark.parametrize('fields,message', [
    ({}, 'Set exactly one of config fields sampling.steps'),
    ({'steps': 10, 'nfe': 10}, 'Set exactly one of config fields sampling.steps'),
    ({'steps': 0}, 'sampling.steps = 0 must be a positive integer'),
    ({'steps': 10, 'eta': 1.5}, r'sampling.eta = 1.5 must lie in \[0, 1\]'),
    ({'steps': 10, 'time_schedule': 'cosine'}, "sampling.time_schedule = 'cosine'"),
    ({'nfe': 1}, 'nfe = 1 is too small'),
])
def test_config_errors(fields, message):
  config = tiny_config()
  config.sampling.method = 'ddim'
  config.sampling.update(fields)
  with pytest.raises(ValueError, match=message):
    sampling.get_sampler(config, oracle.SDES['vp'])


@pytest.mark.parametrize('method', ['dpm_solver', 'ode'])
def test_model_sampler_guidance_scales(method):
  """A class-conditional MLP through get_model_sampler: scale 0 samples with the null label,
  scale 1 with the class labels, as the plain sampler given those scores. (The untrained
  network's large scores amplify the rounding differences of batching the two guidance passes
  together, hence the tolerance; the two scales' samples differ far more.)"""
  from score_sde import models
  config = tiny_config()
  config.model.num_classes = 3
  config.sampling.update(method=method, nfe=8 if method != 'ode' else None, rtol=1e-5, atol=1e-5)
  sde = sde_lib.get_sde(config)
  model, variables = models.init_model(jax.random.PRNGKey(0), config, (2,))
  score_fn = models.get_score_fn(sde, model, variables, continuous=True)
  plain = sampling.get_sampler(config, sde)
  labels = jnp.array([0, 1, 2, 1])
  key = jax.random.PRNGKey(1)
  drawn = []
  for scale, expected_labels in ((0.0, jnp.full(4, 3)), (1.0, labels)):
    config.sampling.guidance_scale = scale
    draw = sampling.get_model_sampler(config, sde, model, (4, 2))
    samples, _ = draw(variables, key, 0, labels)
    if method == 'ode':  # one sample at a time, one label each
      expected = jnp.concatenate([plain(
          key, lambda x, t, y=y: score_fn(x, t, class_labels=jnp.full(x.shape[0], y)), (1, 2),
          k)[0] for k, y in enumerate(expected_labels)])
    else:
      expected = plain(key, lambda x, t: score_fn(x, t, class_labels=expected_labels), (4, 2))[0]
    np.testing.assert_allclose(samples, expected, rtol=2e-2, atol=1e-2)
    drawn.append(samples)
  assert np.max(np.abs(drawn[0] - drawn[1]) / (np.abs(drawn[1]) + 1)) > 0.2
  with pytest.raises(ValueError, match='sampling.guidance_scale = 1.0 needs a conditional model'):
    config.model.num_classes = None
    sampling.get_model_sampler(config, sde, model, (4, 2))


def test_a_guidance_scale_given_to_the_sampler_is_the_configs_and_compiles_once():
  from score_sde import models
  config = tiny_config()
  config.model.num_classes = 3
  config.sampling.update(method='dpm_solver', nfe=8)
  sde = sde_lib.get_sde(config)
  model, variables = models.init_model(jax.random.PRNGKey(0), config, (2,))
  labels, key = jnp.array([0, 1, 2, 1]), jax.random.PRNGKey(1)
  swept = sampling.get_model_sampler(config, sde, model, (4, 2))  # config scale None
  for scale in (0.0, 1.0, 3.0):
    config.sampling.guidance_scale = scale
    fixed = sampling.get_model_sampler(config, sde, model, (4, 2))
    np.testing.assert_allclose(swept(variables, key, 0, labels, jnp.float32(scale))[0],
                               fixed(variables, key, 0, labels)[0], rtol=1e-5, atol=1e-6)
  assert swept._cache_size() == 1
  config.model.num_classes = config.sampling.guidance_scale = None
  unconditional = models.init_model(jax.random.PRNGKey(0), config, (2,))
  draw = sampling.get_model_sampler(config, sde, unconditional[0], (4, 2))
  with pytest.raises(ValueError, match='given a guidance_scale, which needs a conditional model'):
    draw(unconditional[1], key, 0, None, jnp.float32(1.0))
