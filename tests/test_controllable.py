"""Controllable generation with the exact scores of Gaussian mixtures: inpainting keeps the known
coordinates exactly and draws the unknown ones from the exact conditional law; colorization does
the same in the grey/chroma basis; classifier guidance with the exact posterior samples one
component.

The replacement method is exact only in the limit where the known coordinates identify the
component long before the sampler settles on one (see score_sde/controllable.py): the mixtures
here separate their components along the known coordinates.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import controllable, sampling
from score_sde.gaussian_mixture import GaussianMixture
from tests import oracle

NUM_SAMPLES = 3000


def pc_sampler(name):
  return sampling.get_pc_sampler(oracle.SDES[name], 'reverse_diffusion', 'langevin', snr=0.16,
                                 eps=oracle.EPS[name])


@functools.lru_cache(maxsize=None)
def inpainted(name):
  sde = oracle.SDES[name]
  gmm = oracle.separated_mixture([[3.0, 1.0, 0.0, 1.0], [-3.0, -1.0, 0.0, 1.0],
                                  [0.0, 0.0, 3.0, -1.5]], seed=1)
  known = np.array([True, False, True, False])
  values = gmm.means[0][known] + 0.1  # near component 0: its conditional dominates
  data = jnp.zeros((NUM_SAMPLES, 4)).at[:, known].set(values)
  run = jax.jit(lambda key: controllable.inpaint(key, gmm.score_fn(sde), sde, pc_sampler(name),
                                                 data, known.astype(np.float32)))
  x, nfe = run(jax.random.PRNGKey(0))
  return np.asarray(x), nfe, gmm.conditional(known, values), known, values


@pytest.mark.parametrize('name', oracle.SDES)
def test_inpainting_follows_the_exact_conditional(name):
  x, nfe, conditional, known, values = inpainted(name)
  assert nfe == 1000 + 999
  np.testing.assert_array_equal(x[:, known], np.broadcast_to(values.astype(np.float32),
                                                             (NUM_SAMPLES, 2)))
  oracle.assert_follows_mixture(x[:, ~known], conditional)


def test_colorization_matches_the_grey_image_and_the_exact_conditional():
  name, sde = 've', oracle.SDES['ve']
  basis = controllable.COLOUR_BASIS
  np.testing.assert_allclose(basis.T @ basis, np.eye(3), atol=1e-6)
  # One pixel, three channels; the components have distinct grey levels -2, 0, 2.
  gmm = oracle.separated_mixture([[-3.0, -2.0, -1.0], [0.5, -0.5, 0.0], [2.0, 2.0, 2.0]], seed=2)
  grey = float(gmm.means[1].mean()) + 0.05

  def score_fn(x, t):  # x (B, 1, 1, 3)
    return gmm.score(x.reshape(-1, 3), t, sde).reshape(x.shape)

  grey_images = jnp.full((NUM_SAMPLES, 1, 1, 1), grey)
  x, _ = jax.jit(lambda key: controllable.colorize(key, score_fn, sde, pc_sampler(name),
                                                   grey_images))(jax.random.PRNGKey(1))
  x = np.asarray(x).reshape(-1, 3)
  np.testing.assert_allclose(x.mean(-1), grey, atol=1e-5)
  # In the basis y = x Q the first coordinate is sqrt(3) grey: condition the rotated mixture.
  rotated = GaussianMixture(gmm.weights, gmm.means @ basis,
                            np.einsum('di,kde,ej->kij', basis, gmm.covs, basis))
  conditional = rotated.conditional(np.array([True, False, False]), np.array([np.sqrt(3) * grey]))
  oracle.assert_follows_mixture(x @ basis[:, 1:], conditional)


@pytest.mark.parametrize('method', ['pc', 'ode'])
def test_classifier_guidance_samples_the_class(method):
  name, label = 'vp', 2
  sde, gmm = oracle.SDES[name], oracle.mixture(2)
  labels = jnp.full(NUM_SAMPLES, label) if method == 'pc' else label  # ODE: one class
  score_fn = controllable.conditional_score_fn(gmm.score_fn(sde), gmm.logit_fn(sde), labels)
  if method == 'pc':
    sampler = sampling.get_pc_sampler(sde, 'reverse_diffusion', 'none', eps=oracle.EPS[name])
  else:
    sampler = sampling.get_ode_sampler(sde, eps=oracle.EPS[name])
  x, _ = jax.jit(lambda key: sampler(key, score_fn, (NUM_SAMPLES, 2)))(jax.random.PRNGKey(2))
  oracle.assert_follows_mixture(x, gmm.component(label))


def test_guidance_scale_zero_is_unconditional():
  sde, gmm = oracle.SDES['vp'], oracle.mixture(2)
  score_fn = controllable.conditional_score_fn(gmm.score_fn(sde), gmm.logit_fn(sde),
                                               jnp.zeros(NUM_SAMPLES, jnp.int32),
                                               guidance_scale=0.0)
  sampler = sampling.get_pc_sampler(sde, 'reverse_diffusion', 'none')
  x, _ = jax.jit(lambda key: sampler(key, score_fn, (NUM_SAMPLES, 2)))(jax.random.PRNGKey(3))
  oracle.assert_follows_mixture(x, gmm)


def test_per_sample_labels_are_refused_by_the_ode():
  sde, gmm = oracle.SDES['vp'], oracle.mixture(2)
  score_fn = controllable.conditional_score_fn(gmm.score_fn(sde), gmm.logit_fn(sde),
                                               jnp.zeros(4, jnp.int32))
  with pytest.raises(ValueError, match='4 labels for a batch of 1'):
    sampling.get_ode_sampler(sde)(jax.random.PRNGKey(0), score_fn, (4, 2))
