"""The Stable Diffusion pipeline as a citizen of the framework, on the tiny SD-2.x-shaped pipeline
(v-prediction, tests/data/sd): every registered sampler in both time modes, classifier-free
guidance, per-image seeds, inpainting, the likelihood of latents, half-precision computation."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import sampling, stable_diffusion
from score_sde.sampling import grid, ode

DATA = os.path.join(os.path.dirname(__file__), 'data', 'sd')
SIZE = 16  # pixels: 4 x 4 latents, the smallest the tiny U-Net takes
PROMPTS = ['a red cube', 'a portrait of a cat']


@pytest.fixture(scope='module')
def pipe():
  return stable_diffusion.load_pipeline(os.path.join(DATA, 'sd2_diffusers'))


@pytest.fixture(scope='module')
def contexts(pipe):
  return pipe.encode_text(pipe.tokenize(PROMPTS)), pipe.encode_text(pipe.tokenize(['', '']))


# Each registered sampler with its NFE (None: adaptive), in the time mode that suits it.
SAMPLER_RUNS = [
    ('ddim_diffusers', 5, 'discrete', {}, 5),
    ('ddim', 5, 'discrete', {}, 6),
    ('dpm_solver', 5, 'discrete', {'variant': '3M'}, 6),
    ('edm', 3, 'discrete', {}, 7),
    ('pc', None, 'discrete', {}, 1000),
    ('pc', 20, 'continuous', {}, 20),
    ('ode', 4, 'continuous', {'ode_solver': 'heun'}, 4 * 2 + 1),
]


def test_every_registered_sampler_is_covered():
  assert {run[0] for run in SAMPLER_RUNS} == set(stable_diffusion.SAMPLERS)
  assert set(sampling.SAMPLING_METHODS) - set(stable_diffusion.SAMPLERS) == {'consistency'}


@pytest.mark.parametrize('method,steps,timesteps,options,nfe', SAMPLER_RUNS,
                         ids=[f'{r[0]}-{r[2]}' for r in SAMPLER_RUNS])
def test_every_sampler_produces_finite_images(pipe, method, steps, timesteps, options, nfe):
  latents, used = pipe.sample_latents(PROMPTS, sampler=method, num_steps=steps, height=SIZE,
                                      width=SIZE, timesteps=timesteps, **options)
  assert latents.shape == (2, SIZE // 4, SIZE // 4, 4)
  images = pipe.latents_to_images(latents)
  assert images.shape == (2, SIZE, SIZE, 3) and np.all(np.isfinite(images))
  assert np.all(np.isfinite(latents)) and float(jnp.std(latents)) > 0.1
  if nfe is not None:
    assert int(np.max(used)) == nfe


def test_guidance_scales_zero_and_one_are_the_two_predictions_exactly(pipe, contexts):
  # The guided score evaluates both halves in one U-Net call: at w = 1 it is exactly the
  # conditional half of that call, at w = 0 exactly the unconditional half.
  context, null = contexts
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 4))
  t = jnp.array([0.3, 0.8])

  @jax.jit
  def scores(w):
    unguided = pipe.score_fn(jnp.concatenate([context, null]))(jnp.concatenate([x, x]),
                                                               jnp.concatenate([t, t]))
    return unguided, pipe.score_fn(context, null, w)(x, t)

  for w in (0.0, 1.0, 7.5):
    both, guided = scores(w)
    conditional, unconditional = both[:2], both[2:]
    if w == 1.0:
      np.testing.assert_array_equal(guided, conditional)
    elif w == 0.0:
      np.testing.assert_array_equal(guided, unconditional)
    else:
      np.testing.assert_allclose(guided, unconditional + w * (conditional - unconditional),
                                 rtol=1e-5, atol=1e-5)


def test_continuous_time_asks_the_step_with_the_same_log_snr(pipe, contexts):
  # At the time t* where the continuous kernel's log-SNR equals step i's, the continuous-time
  # score must be the discrete score at step i (same network input, same alpha and sigma).
  context, _ = contexts
  steps = np.array([100, 600])
  abar = pipe.sde.alphas_cumprod[steps]
  t_star = grid.time_of_log_snr(pipe.sde, 0.5 * np.log(abar / (1 - abar)))
  np.testing.assert_allclose(pipe._fractional_steps(jnp.asarray(t_star, jnp.float32)), steps,
                             atol=1e-3)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 4, 4))

  @jax.jit
  def scores(t_continuous, t_discrete):
    return (pipe.score_fn(context, timesteps='continuous')(x, t_continuous),
            pipe.score_fn(context)(x, t_discrete))

  continuous, discrete = scores(jnp.asarray(t_star, jnp.float32),
                                jnp.asarray((steps + 0.5) / 999, jnp.float32))
  np.testing.assert_allclose(continuous, discrete, rtol=1e-5, atol=1e-5 * np.abs(discrete).max())


def test_image_k_is_the_same_wherever_it_sits_in_a_batch(pipe):
  # Image 1 drawn first in a batch of images 1, 2 and second in a batch of images 0, 1.
  first = pipe.generate(['a cow', 'a hen'], sampler='ddim', num_steps=5, height=SIZE,
                        width=SIZE, seed=3, first_index=1)
  second = pipe.generate(['a hen', 'a cow'], sampler='ddim', num_steps=5, height=SIZE,
                         width=SIZE, seed=3)
  np.testing.assert_allclose(first[0], second[1], atol=1e-5)
  assert np.abs(first[1] - second[0]).max() > 0.01  # other prompts, other noise


def test_progress_is_called_once_per_unet_evaluation(pipe):
  calls = []
  _, nfe = pipe.sample_latents(PROMPTS, sampler='ddim_diffusers', num_steps=5, height=SIZE,
                               width=SIZE, progress=lambda: calls.append(1))
  jax.effects_barrier()
  assert len(calls) == nfe == 5


def test_inpainting_keeps_known_pixels_and_with_nothing_known_is_generation(pipe):
  images = jax.random.uniform(jax.random.PRNGKey(2), (2, SIZE, SIZE, 3))
  mask = np.zeros((2, SIZE, SIZE, 1), np.float32)
  mask[:, :SIZE // 2] = 1.0  # the top half is known
  filled = pipe.inpaint(images, mask, PROMPTS, sampler='ddim', num_steps=5, seed=5)
  np.testing.assert_array_equal(filled[:, :SIZE // 2], np.asarray(images)[:, :SIZE // 2])
  assert np.all(np.isfinite(filled))
  # With no known pixel every replacement is a no-op: the run is plain DDIM generation.
  nothing = pipe.inpaint(images, np.zeros_like(mask), PROMPTS, sampler='ddim', num_steps=5,
                         seed=5)
  generated = pipe.generate(PROMPTS, sampler='ddim', num_steps=5, height=SIZE, width=SIZE,
                            seed=5)
  np.testing.assert_allclose(nothing, generated, atol=1e-5)
  with pytest.raises(ValueError, match="inpaint needs a sampler that takes project="):
    pipe.inpaint(images, mask, PROMPTS, sampler='dpm_solver', num_steps=4)


def test_latent_likelihood_pairs_each_latent_with_its_prompt(pipe):
  # Each latent is solved alone, with its own prompt and its own probes: changing its batch-mate
  # leaves it unchanged, changing its own prompt does not.
  z = jax.random.normal(jax.random.PRNGKey(3), (2, 4, 4, 4))
  solver = ode.ODESolver(solver='heun', num_steps=8)
  logp, bpd, nfe = pipe.latent_log_likelihood(z, PROMPTS, solver=solver)
  other_mate, _, _ = pipe.latent_log_likelihood(z.at[1].set(-z[1]), [PROMPTS[0], 'a hen'],
                                                solver=solver)
  other_prompt, _, _ = pipe.latent_log_likelihood(z, ['a hen', PROMPTS[1]], solver=solver)
  assert np.all(np.isfinite(logp)) and np.all(nfe > 0)
  np.testing.assert_allclose(other_mate[0], logp[0], rtol=1e-6)
  assert abs(float(other_prompt[0] - logp[0])) > 1e-3
  np.testing.assert_allclose(other_prompt[1], logp[1], rtol=1e-6)
  np.testing.assert_allclose(bpd, -logp / (64 * np.log(2.0)), rtol=1e-6)


@pytest.mark.parametrize('dtype,tolerance', [('bfloat16', 0.03), ('float16', 0.005)])
def test_half_precision_unet_is_close_to_float32(dtype, tolerance):
  reference = np.load(os.path.join(DATA, 'sd2_reference.npz'))
  half = stable_diffusion.load_pipeline(os.path.join(DATA, 'sd2_diffusers'), dtype=dtype)
  assert jax.tree.leaves(half.params.unet)[0].dtype == jnp.dtype(dtype)
  output = half.unet(reference['unet_latents'], reference['unet_timesteps'],
                     reference['unet_context'])
  error = np.abs(np.asarray(output) - reference['unet_output']).max()
  assert error < tolerance * np.abs(reference['unet_output']).max()


def test_bad_requests_are_refused_before_any_work(pipe):
  with pytest.raises(ValueError, match='height = 20 must be a positive multiple of 16'):
    pipe.generate(PROMPTS, height=20, width=SIZE)
  with pytest.raises(ValueError, match="sampler = 'heun' is not supported"):
    pipe.generate(PROMPTS, sampler='heun', height=SIZE, width=SIZE)
  with pytest.raises(ValueError, match=r"sampler 'ddim' takes no options \['s_churn'\]"):
    pipe.generate(PROMPTS, sampler='ddim', num_steps=4, height=SIZE, width=SIZE, s_churn=1.0)
  with pytest.raises(ValueError, match="'ddim_diffusers' runs on the chain's own steps"):
    pipe.generate(PROMPTS, sampler='ddim_diffusers', timesteps='continuous', height=SIZE,
                  width=SIZE)
  with pytest.raises(ValueError, match="sampler 'pc' in discrete time runs the chain's 1000"):
    pipe.generate(PROMPTS, sampler='pc', num_steps=20, height=SIZE, width=SIZE)
  with pytest.raises(ValueError, match=r'discrete betas up to 1.2 > 1 \(beta_max / N\)'):
    pipe.generate(PROMPTS, sampler='pc', num_steps=10, timesteps='continuous', height=SIZE,
                  width=SIZE)
  with pytest.raises(ValueError, match='init_latents have shape'):
    pipe.generate(PROMPTS, init_latents=np.zeros((1, 4, 4, 4)), height=SIZE, width=SIZE)
  with pytest.raises(ValueError, match='2 negative prompts for 1 prompts'):
    pipe.generate(PROMPTS[:1], ['', ''], height=SIZE, width=SIZE)
