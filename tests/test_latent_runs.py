"""Latent score runs end to end: an autoencoder trained here, then a text-conditional latent
model (the cross-attention U-Net with a jointly trained caption encoder) on its latents. The
scale factor is 1 / std of the first batch's latents, recorded and reused; samples follow their
captions far more often than chance; guidance at 0 and 1 is exactly the unconditional and the
conditional score; bits/dim are labelled as latent; a Stable Diffusion VAE and CLIP plug in as
the autoencoder and the frozen text encoder, matching diffusers' recorded outputs."""
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs.latent.captions_autoencoder import get_config as captions_autoencoder
from configs.latent.captions_text import get_config as captions_text
from score_sde import conditions, datasets, evaluate, latent_runs, methods, train, trained
from score_sde.sampling import guidance

from .test_notebooks import executed_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SD1 = os.path.join(os.path.dirname(__file__), 'data', 'sd', 'sd1_diffusers')
SD1_REFERENCE = os.path.join(os.path.dirname(__file__), 'data', 'sd', 'sd1_reference.npz')


def text_config(autoencoder_workdir):
  """configs/latent/captions_text.py on that autoencoder, with latent bits/dim of 8 examples."""
  config = captions_text()
  config.latent.autoencoder = autoencoder_workdir
  config.eval.update(enable_bpd=True, bpd_num_samples=8, enable_loss=False)
  config.likelihood.update(rtol=1e-3, atol=1e-3)
  return config


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('latent')
  ae_workdir, text_workdir = str(root / 'ae'), str(root / 'text')
  train.train(captions_autoencoder(), ae_workdir)
  config = text_config(ae_workdir)
  train.train(config, text_workdir)
  report, = evaluate.evaluate(config, text_workdir)
  return ae_workdir, text_workdir, config, report


def test_scale_factor_is_one_over_the_std_of_the_first_batch_and_recorded(runs):
  ae_workdir, text_workdir, config, _ = runs
  with open(os.path.join(text_workdir, 'config.json')) as f:
    recorded = json.load(f)['latent']['scale_factor']
  space = latent_runs.load_latent_space(
      latent_runs.resolve_scale_factor(config, text_workdir))
  images = next(datasets.get_dataset(config, 'train', config.training.batch_size))['x']
  mean, std = space.autoencoder.apply({'params': space.params}, 2 * images - 1, method='encode')
  draw = jax.random.normal(jax.random.PRNGKey(config.seed), mean.shape)
  raw = np.asarray(mean, np.float64) + np.asarray(std, np.float64) * np.asarray(draw)
  np.testing.assert_allclose(recorded, 1 / raw.std(), rtol=1e-5)
  assert space.scale_factor == recorded and space.latent_shape == (4, 4, 2)


def test_a_restart_reuses_the_recorded_scale_factor(runs, monkeypatch):
  _, text_workdir, config, _ = runs
  with open(os.path.join(text_workdir, 'config.json')) as f:
    recorded = json.load(f)['latent']['scale_factor']
  monkeypatch.setattr(datasets, 'get_dataset', lambda *a, **k: pytest.fail('re-estimated'))
  assert latent_runs.resolve_scale_factor(config, text_workdir).latent.scale_factor == recorded


def test_samples_show_the_digit_their_caption_names(runs):
  *_, report = runs
  assert report['num_samples'] == 200
  assert report['digit_accuracy'] > 0.3, report  # chance: 0.1
  assert report['fd_digits'] < 10 * report['fd_digits_train_vs_test'], report


def test_bits_per_dim_are_labelled_latent(runs):
  *_, report = runs
  assert report['latent_bpd_num_values'] == 8 and np.isfinite(report['latent_bpd'])
  assert 'bpd' not in report


def test_sample_mode_decodes_to_images(runs):
  _, text_workdir, config, _ = runs
  config = config.copy_and_resolve_references()
  config.eval.num_samples = 10
  out = evaluate.sample(config, text_workdir)
  with np.load(os.path.join(out, 'samples.npz')) as f:
    assert f['samples'].shape == (10, 8, 8, 1) and f['samples'].dtype == np.uint8


def test_guidance_at_0_and_1_is_the_unconditional_and_the_conditional_score(runs):
  _, text_workdir, config, _ = runs
  run = trained.load(text_workdir, latent_runs.resolve_scale_factor(config, text_workdir))
  conds = conditions.get_conditions(config)
  ids = conds.encode(['a handwritten three', 'a handwritten nine'])
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 4, 2))
  t = jnp.asarray([0.3, 0.7])
  model_score = jax.jit(run._model_score())
  conditional = model_score(x, t, class_labels=jnp.asarray(ids))
  unconditional = model_score(x, t, class_labels=jnp.broadcast_to(conds.null, ids.shape))
  guided = lambda w: guidance.guided_score_fn(model_score, ids, w, conds.null)(x, t)  # noqa
  np.testing.assert_allclose(guided(0.0), unconditional, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(guided(1.0), conditional, rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(conditional - unconditional)).max() > 1e-3


def test_an_autoencoder_of_other_images_is_refused(runs):
  ae_workdir, _, config, _ = runs
  other = config.copy_and_resolve_references()
  other.data.image_size = 16
  with pytest.raises(ValueError, match=r'trained on images of shape \(8, 8, 1\)'):
    latent_runs.load_latent_space(other)
  other.latent.autoencoder = ae_workdir + '_missing'
  with pytest.raises(FileNotFoundError, match='does not exist'):
    latent_runs.load_latent_space(other)


def sd_config():
  config = ml_collections.ConfigDict({
      'seed': 0, 'data': {'dataset': 'CIFAR10', 'image_size': 32, 'num_channels': 3},
      'latent': {'autoencoder': SD1, 'scale_factor': None, 'sample_posterior': False},
      'model': {'name': 'ldm_unet', 'conditioning': 'clip', 'text_encoder': SD1,
                'context_dim': 32, 'context_length': 77}})
  return config


def test_a_stable_diffusion_vae_is_an_autoencoder_with_its_own_scale():
  reference = np.load(SD1_REFERENCE)
  config = sd_config()
  space = latent_runs.load_latent_space(latent_runs.resolve_scale_factor(config, '/nonexistent'))
  assert space.scale_factor == 0.18215 and space.latent_shape == (8, 8, 4)
  latents = space.encode(jnp.asarray(reference['vae_images']), jax.random.PRNGKey(0))
  np.testing.assert_allclose(latents, 0.18215 * reference['vae_mean'], atol=2e-5)
  decoded = space.decode(0.18215 * jnp.asarray(reference['vae_decode_latents']))
  np.testing.assert_allclose(decoded, np.clip((reference['vae_decoded'] + 1) / 2, 0, 1),
                             atol=2e-5)


def test_clip_conditions_are_the_text_encoders_hidden_states():
  reference = np.load(SD1_REFERENCE)
  with open(os.path.join(os.path.dirname(SD1), 'prompts.json')) as f:
    prompts = json.load(f)
  conds = conditions.get_conditions(sd_config())
  assert conds.kind == 'clip' and conds.field == 'caption'
  np.testing.assert_allclose(conds.encode(prompts), reference['text_hidden'], atol=2e-5)
  np.testing.assert_allclose(conds.null, reference['text_hidden'][prompts.index('')], atol=2e-5)
  wrong = sd_config()
  wrong.model.context_dim = 64
  with pytest.raises(ValueError, match='context_dim = 64 must be 32'):
    conditions.get_conditions(wrong)


def test_a_conditional_model_needs_conditioned_data():
  config = text_config('unused')
  config.data.dataset = 'digits'
  with pytest.raises(ValueError, match="yields no 'caption'"):
    methods.check_conditions(config, conditions.get_conditions(config))


def zoo_config(autoencoder_workdir: str):
  """NCSN++ (the digits DDPM++ recipe, VP SDE; one level, one block) on the latents of the runs'
  autoencoder, 10 steps (the scale factor estimated on the way), evaluated on 8 decoded samples
  (DPM-Solver++, 5 steps)."""
  from configs.latent.digits_vp import get_config as digits_vp
  config = digits_vp()
  config.latent.autoencoder = autoencoder_workdir  # trained on 8 x 8 x 1 captioned digits
  config.data.image_size = 8
  config.model.update(nf=16, ch_mult=(1,), num_res_blocks=1, attn_resolutions=())
  config.training.update(n_iters=10, snapshot_freq=10, snapshot_freq_for_preemption=10,
                         log_freq=5, eval_freq=10)
  config.sampling.update(method='dpm_solver', steps=5)
  config.eval.update(begin_ckpt=1, end_ckpt=1, num_samples=8, batch_size=8, enable_bpd=False)
  return config


FOUR_DEVICES = '''
import sys
import jax, numpy as np
from score_sde import evaluate, parallel, train
from tests.test_latent_runs import zoo_config
config = zoo_config(sys.argv[1])
state = train.train(config, sys.argv[2])
report, = evaluate.evaluate(config, sys.argv[2])
np.savez(sys.argv[3], devices=jax.device_count(), num_samples=report['num_samples'],
         params_replicated=all(leaf.sharding.is_fully_replicated
                               for leaf in jax.tree.leaves(state.params)),
         **{jax.tree_util.keystr(path): np.asarray(parallel.to_host(leaf))
            for path, leaf in jax.tree_util.tree_leaves_with_path(state.params)})
'''


def test_a_zoo_model_trains_on_the_latents_alike_on_one_and_four_devices(runs, tmp_path):
  """Any zoo model trains on latents; with the batches encoded in the step, the scale factor
  estimated and the decoded samples split over four devices, the parameters after 10 steps
  equal the one-device run's, to float tolerance."""
  ae_workdir, *_ = runs
  out = str(tmp_path / 'four.npz')
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=4',
         'JAX_PLATFORMS': 'cpu'}
  worker = subprocess.Popen(
      [sys.executable, '-c', FOUR_DEVICES, ae_workdir, str(tmp_path / 'four'), out], cwd=ROOT,
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  state = train.train(zoo_config(ae_workdir), str(tmp_path / 'one'))
  _, err = worker.communicate(timeout=600)
  assert worker.returncode == 0, err[-3000:]
  kernels = [leaf.shape for leaf in jax.tree.leaves(state.params) if leaf.ndim == 4]
  assert (3, 3, 2) in [shape[:3] for shape in kernels]  # the input conv sees 2 latent channels
  assert any(shape[-1] == 2 for shape in kernels)  # and the output conv gives 2
  result = np.load(out)
  assert int(result['devices']) == 4 and bool(result['params_replicated'])
  assert int(result['num_samples']) == 8
  factors = []
  for name in ('one', 'four'):
    with open(tmp_path / name / 'config.json') as f:
      factors.append(json.load(f)['latent']['scale_factor'])
  np.testing.assert_allclose(*factors, rtol=1e-5)  # estimated from the same first batch
  for path, leaf in jax.tree_util.tree_leaves_with_path(state.params):
    np.testing.assert_allclose(result[jax.tree_util.keystr(path)], np.asarray(leaf), rtol=2e-4,
                               atol=2e-5)


def test_a_model_conditioned_on_frozen_clip_trains_and_samples(tmp_path):
  """model.conditioning = 'clip' through the driver: the steps take CLIP's hidden states of the
  captions (diffusers' recorded values for the fixture's prompts), CLIP's weights stay out of the
  trained state, and --mode sample draws for test captions."""
  reference = np.load(SD1_REFERENCE)
  with open(os.path.join(os.path.dirname(SD1), 'prompts.json')) as f:
    prompts = json.load(f)
  config = text_config(None)  # in pixel space: conditions are independent of latents
  config.model.update(conditioning='clip', text_encoder=SD1, context_dim=32, context_length=77,
                      vocabulary=None)
  config.model.update(nf=16, ch_mult=(1,), attn_resolutions=(8,), head_dim=8)
  config.training.update(n_iters=3, snapshot_freq=3, snapshot_freq_for_preemption=3,
                         eval_freq=3, log_freq=3, batch_size=8)
  config.eval.update(num_samples=4, batch_size=4)
  method = methods.get_method(config)
  arrays = method.batch_arrays({'x': np.zeros((len(prompts), 8, 8, 1), np.float32),
                                'caption': np.asarray(prompts)})
  np.testing.assert_allclose(arrays['labels'], reference['text_hidden'], atol=2e-5)
  state = train.train(config, str(tmp_path))
  assert set(state.params) == {'unet'}  # a 'text' model also trains 'text_context'
  out = evaluate.sample(config, str(tmp_path))
  with np.load(os.path.join(out, 'samples.npz')) as f:
    assert f['samples'].shape == (4, 8, 8, 1)


def test_the_notebook_runs_on_these_runs(runs, tmp_path, monkeypatch):
  """notebooks/latent_diffusion.ipynb loads the runs above (its SCORE_SDE_LATENT_DEMO path; its
  training cell trains the same two configs), shows samples per caption and sweeps guidance."""
  _, text_workdir, *_ = runs
  monkeypatch.setenv('SCORE_SDE_LATENT_DEMO', text_workdir)
  text = executed_text('latent_diffusion', tmp_path)
  hits = [float(h) for h in re.findall(r'samples showing their caption (\d+)%', text)]
  assert len(hits) == 3, text
  assert hits[0] < 25 and hits[2] > 30 and hits[2] > hits[0] + 10, text  # chance: 10%
