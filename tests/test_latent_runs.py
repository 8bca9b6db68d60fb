"""Latent score runs end to end: an autoencoder trained here, then a text-conditional latent
model (the cross-attention U-Net with a jointly trained caption encoder) on its latents. The
scale factor is 1 / std of the first batch's latents, recorded and reused; samples follow their
captions far more often than chance; guidance at 0 and 1 is exactly the unconditional and the
conditional score; bits/dim are labelled as latent; a Stable Diffusion VAE and CLIP plug in as
the autoencoder and the frozen text encoder, matching diffusers' recorded outputs."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs.autoencoder.digits_f4 import get_config as digits_autoencoder
from configs.latent.pairs_text import get_config as pairs_text
from score_sde import conditions, datasets, evaluate, latent_runs, methods, train, trained
from score_sde.sampling import guidance

SD1 = os.path.join(os.path.dirname(__file__), 'data', 'sd', 'sd1_diffusers')
SD1_REFERENCE = os.path.join(os.path.dirname(__file__), 'data', 'sd', 'sd1_reference.npz')


def autoencoder_config():
  """8 x 8 captioned digits -> 4 x 4 x 2 latents (f = 2), 300 steps."""
  config = digits_autoencoder()
  config.data.update(dataset='digit_captions', image_size=8)
  config.training.update(n_iters=300, snapshot_freq=300, snapshot_freq_for_preemption=300,
                         eval_freq=300, snapshot_sampling=False)
  config.autoencoder.update(block_channels=(16, 32), norm_groups=8, latent_channels=2)
  return config


def text_config(autoencoder_workdir: str):
  """The demo's text-conditional latent model, smaller, on 'a handwritten seven' captions."""
  config = pairs_text()
  config.latent.autoencoder = autoencoder_workdir
  config.data.update(dataset='digit_captions', image_size=8)
  config.training.update(n_iters=400, snapshot_freq=400, snapshot_freq_for_preemption=400,
                         eval_freq=400, label_dropout=0.2, log_freq=100)
  config.model.update(nf=32, context_dim=32, context_length=3, attn_resolutions=(4, 2),
                      ema_rate=0.99)
  config.sampling.update(steps=10, guidance_scale=3.0)
  config.eval.update(begin_ckpt=1, end_ckpt=1, num_samples=200, batch_size=100,
                     enable_bpd=True, bpd_num_samples=8, enable_loss=False)
  config.likelihood.update(rtol=1e-3, atol=1e-3)
  config.optim.lr = 2e-3
  return config


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('latent')
  ae_workdir, text_workdir = str(root / 'ae'), str(root / 'text')
  train.train(autoencoder_config(), ae_workdir)
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
  model_score = run._model_score()
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


def test_a_zoo_model_trains_on_the_latents(runs, tmp_path):
  from configs.latent.digits_vp import get_config as digits_vp
  ae_workdir, *_ = runs
  config = digits_vp()  # NCSN++ (DDPM++ recipe), VP SDE
  config.latent.autoencoder = ae_workdir  # trained on 8 x 8 x 1 captioned digits
  config.data.image_size = 8
  config.model.attn_resolutions = ()
  config.training.update(n_iters=10, snapshot_freq=10, snapshot_freq_for_preemption=10,
                         log_freq=5, eval_freq=10)
  state = train.train(config, str(tmp_path))
  kernels = [leaf.shape for leaf in jax.tree.leaves(state.params) if leaf.ndim == 4]
  assert (3, 3, 2) in [shape[:3] for shape in kernels]  # the input conv sees 2 latent channels
  assert any(shape[-1] == 2 for shape in kernels)  # and the output conv gives 2
  with open(os.path.join(str(tmp_path), 'metrics.jsonl')) as f:
    losses = [json.loads(line)['train/loss'] for line in f if 'train/loss' in line]
  assert len(losses) == 2 and all(np.isfinite(losses))
