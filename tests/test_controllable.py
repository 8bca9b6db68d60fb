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
from score_sde import sde as sde_lib
from score_sde.gaussian_mixture import GaussianMixture
from tests import oracle

NUM_SAMPLES = 3000


def pc_sampler(name):
  return sampling.get_pc_sampler(oracle.SDES[name], 'reverse_diffusion', 'langevin', snr=0.16,
                                 eps=oracle.EPS[name])


INPAINT_GMM = oracle.separated_mixture([[3.0, 1.0, 0.0, 1.0], [-3.0, -1.0, 0.0, 1.0],
                                        [0.0, 0.0, 3.0, -1.5]], seed=1)
KNOWN = np.array([True, False, True, False])
VALUES = INPAINT_GMM.means[0][KNOWN] + 0.1  # near component 0: its conditional dominates


def inpaint(sde, sampler, score_sde=None, kernel=None):
  """Inpaints NUM_SAMPLES copies of VALUES at the KNOWN coordinates with the mixture's exact
  score (the perturbation kernel of `score_sde`, default `sde`), the known part noised by
  `kernel` (default: the SDE's); returns (x, nfe)."""
  score_fn = INPAINT_GMM.score_fn(score_sde or sde)
  data = jnp.zeros((NUM_SAMPLES, 4)).at[:, KNOWN].set(VALUES)
  x, nfe = jax.jit(lambda key: controllable.inpaint(key, score_fn, sde, sampler, data,
                                                    KNOWN.astype(np.float32), kernel=kernel))(
      jax.random.PRNGKey(0))
  np.testing.assert_array_equal(x[:, KNOWN], np.broadcast_to(VALUES.astype(np.float32),
                                                             (NUM_SAMPLES, 2)))
  return np.asarray(x), nfe


@functools.lru_cache(maxsize=None)
def inpainted(name):
  x, nfe = inpaint(oracle.SDES[name], pc_sampler(name))
  return x, nfe, INPAINT_GMM.conditional(KNOWN, VALUES), KNOWN, VALUES


@pytest.mark.parametrize('name', oracle.SDES)
def test_inpainting_follows_the_exact_conditional(name):
  x, nfe, conditional, known, values = inpainted(name)
  assert nfe == 1000 + 999
  np.testing.assert_array_equal(x[:, known], np.broadcast_to(values.astype(np.float32),
                                                             (NUM_SAMPLES, 2)))
  oracle.assert_follows_mixture(x[:, ~known], conditional)


# Sliced W1 of the unknown coordinates to the exact conditional (its floor with 3,000 exact
# samples: 0.007). Replacement without a corrector is biased: the score sees the known part's
# fresh noisy draw, not the data: PC without its Langevin corrector lands at 0.020, DDIM with
# eta = 1 at 0.017 (200 steps) - 0.023 (100), deterministic DDIM (eta = 0) at 0.08.
DDIM_INPAINT_W1 = {1.0: 0.035, 0.0: 0.1}


@pytest.mark.parametrize('name,eta', [('vp', 1.0), ('subvp', 1.0), ('ve', 1.0), ('vp', 0.0)])
def test_inpainting_with_ddim(name, eta):
  sde = oracle.SDES[name]
  sampler = sampling.get_ddim_sampler(sde, nfe=200 if eta else 100, eta=eta, eps=oracle.EPS[name])
  x, nfe = inpaint(sde, sampler)
  assert nfe == (200 if eta else 100)
  conditional = INPAINT_GMM.conditional(KNOWN, VALUES)
  assert conditional.sliced_wasserstein(x[:, ~KNOWN]) < DDIM_INPAINT_W1[eta]


@pytest.mark.parametrize('chain_kernel', [False, True], ids=['sde-kernel', 'chain-kernel'])
def test_inpainting_with_ddim_diffusers(chain_kernel):
  """diffusers' DDIM (eta = 1, 100 steps) on Stable Diffusion's chain, with the mixture's exact
  score on that chain; the known part noised by the SDE's continuous kernel, or by the chain's
  own (the levels the sampler's states stand at)."""
  sde = sde_lib.VPSDE(beta_min=0.85, beta_max=12.0, beta_schedule='scaled_linear')
  sampler = sampling.get_ddim_diffusers_sampler(sde, num_steps=100, eta=1.0)
  chain = oracle.DiscreteKernel(sde=sde)

  def kernel(t):
    return chain.marginal_prob(jnp.ones_like(t), t)

  x, nfe = inpaint(sde, sampler, score_sde=chain, kernel=kernel if chain_kernel else None)
  assert nfe == 100
  conditional = INPAINT_GMM.conditional(KNOWN, VALUES)
  assert conditional.sliced_wasserstein(x[:, ~KNOWN]) < DDIM_INPAINT_W1[1.0]


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
