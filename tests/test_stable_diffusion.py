"""Stable Diffusion against diffusers / transformers: tiny SD-1.x- and SD-2.x-shaped pipelines with
random weights (tests/data/sd, made by scripts/make_sd_fixtures.py), loaded from the diffusers
folder layout and compared with the reference outputs the fixture script recorded from diffusers
and transformers; the original single-file layout (SD 1.x as a float16 .ckpt, SD 2.x as bfloat16
.safetensors with OpenCLIP names) must load to exactly the same parameters."""
import json
import os

import jax
import numpy as np
import pytest

from score_sde import stable_diffusion

DATA = os.path.join(os.path.dirname(__file__), 'data', 'sd')
SINGLE_FILES = {'sd1': 'sd1_single.ckpt', 'sd2': 'sd2_single.safetensors'}


def folder_of(family: str) -> str:
  return os.path.join(DATA, f'{family}_diffusers')


@pytest.fixture(scope='module', params=['sd1', 'sd2'])
def loaded(request):
  family = request.param
  return (family, stable_diffusion.load_pipeline(folder_of(family)),
          np.load(os.path.join(DATA, f'{family}_reference.npz')))


def test_single_file_holds_the_folders_parameters(loaded):
  family, pipe, _ = loaded
  single = stable_diffusion.load_pipeline(os.path.join(DATA, SINGLE_FILES[family]),
                                          architecture=folder_of(family))
  for name in ('unet', 'vae', 'text'):
    ours, theirs = getattr(single.params, name), getattr(pipe.params, name)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
      np.testing.assert_array_equal(a, b)
  assert single.architecture == pipe.architecture


def assert_close_to_reference(ours, reference, what):
  """Within 1e-5 x max(1, max |reference|), the issue's tolerance for network outputs."""
  tolerance = 1e-5 * max(1.0, float(np.max(np.abs(reference))))
  error = float(np.max(np.abs(np.asarray(ours) - reference)))
  assert error <= tolerance, f'{what}: max error {error:.3g} > {tolerance:.3g}'


def test_tokenizer_gives_the_reference_ids(loaded):
  _, pipe, reference = loaded
  with open(os.path.join(DATA, 'prompts.json'), encoding='utf-8') as f:
    prompts = json.load(f)
  np.testing.assert_array_equal(pipe.tokenize(prompts), reference['token_ids'])


def test_text_encoder_hidden_states_match(loaded):
  _, pipe, reference = loaded
  ids = reference['token_ids']
  assert_close_to_reference(pipe.encode_text(ids), reference['text_hidden'], 'last hidden state')
  assert_close_to_reference(pipe.encode_text(ids, penultimate=True),
                            reference['text_penultimate'], 'penultimate hidden state')


def test_unet_output_matches(loaded):
  _, pipe, reference = loaded
  output = pipe.unet(reference['unet_latents'], reference['unet_timesteps'],
                     reference['unet_context'])
  assert_close_to_reference(output, reference['unet_output'], 'U-Net output')


def test_vae_posterior_and_decoder_match(loaded):
  _, pipe, reference = loaded
  mean, std = pipe.vae_encode(reference['vae_images'])
  assert_close_to_reference(mean, reference['vae_mean'], 'posterior mean')
  assert_close_to_reference(std, reference['vae_std'], 'posterior std')
  assert_close_to_reference(pipe.vae_decode(reference['vae_decode_latents']),
                            reference['vae_decoded'], 'decoder output')


def test_ddim_diffusers_with_guidance_gives_the_diffusers_image(loaded):
  family, pipe, reference = loaded
  with open(os.path.join(DATA, f'{family}_e2e.json'), encoding='utf-8') as f:
    run = json.load(f)
  images = pipe.generate(run['prompt'], run['negative_prompt'], sampler='ddim_diffusers',
                         num_steps=run['num_inference_steps'],
                         guidance_scale=run['guidance_scale'],
                         init_latents=reference['e2e_init_latents'], height=run['height'],
                         width=run['width'])
  assert images.shape == reference['e2e_images'].shape
  np.testing.assert_allclose(images, reference['e2e_images'], atol=1e-3, rtol=0)


def test_img2img_with_ddim_diffusers_gives_the_diffusers_image(loaded):
  # diffusers' StableDiffusionImg2ImgPipeline from given clean latents and noise: the same
  # timesteps kept for the strength, the same noising, the same guided DDIM steps.
  family, pipe, reference = loaded
  with open(os.path.join(DATA, f'{family}_e2e.json'), encoding='utf-8') as f:
    run = json.load(f)
  images = pipe.img2img(None, run['prompt'], run['negative_prompt'],
                        strength=run['img2img_strength'], sampler='ddim_diffusers',
                        num_steps=run['num_inference_steps'],
                        guidance_scale=run['guidance_scale'],
                        init_latents=reference['img2img_clean_latents'],
                        noise=reference['img2img_noise'])
  np.testing.assert_allclose(images, reference['img2img_images'], atol=1e-3, rtol=0)
