"""Autoencoder runs through the drivers (training.method = 'autoencoder'): training with the
discriminator switched on mid-run resumes bitwise, --mode eval reports PSNR / SSIM equal to a
numpy recomputation over the whole test split and pictures originals beside reconstructions,
the LPIPS term is the objective written out, and missing LPIPS files fail before any work."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs.autoencoder.digits_f4 import get_config as digits_autoencoder
from score_sde import autoencoder_training, checkpoints, datasets, evaluate, lpips, methods
from score_sde import train

LPIPS_FIXTURE = os.path.join(os.path.dirname(__file__), 'data', 'lpips')


def tiny_config():
  """16 x 16 digits, a 2-block autoencoder (f = 2), the discriminator on from step 6 of 12."""
  config = digits_autoencoder()
  config.training.update(batch_size=16, n_iters=12, log_freq=4, eval_freq=6, snapshot_freq=6,
                         snapshot_freq_for_preemption=3)
  config.autoencoder.update(block_channels=(8, 16), norm_groups=4, discriminator_weight=0.5,
                            discriminator_start=6, discriminator_channels=8,
                            discriminator_layers=1)
  config.eval.update(begin_ckpt=2, end_ckpt=2, batch_size=64)
  return config


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  config = tiny_config()
  workdir = str(tmp_path_factory.mktemp('autoencoder'))
  state = train.train(config, workdir)
  return config, workdir, state


def test_training_logs_every_term_and_switches_the_discriminator_on(run):
  _, workdir, state = run
  assert int(state.step) == 12
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  train_rows = {r['step']: r for r in rows if 'train/loss' in r}
  assert train_rows[4]['train/factor'] == 0.0 and train_rows[12]['train/factor'] == 1.0
  assert train_rows[12]['train/adaptive_weight'] > 0
  assert all(np.isfinite(r['train/discriminator_loss']) for r in train_rows.values())
  assert any('eval/loss' in r for r in rows)
  assert os.path.exists(os.path.join(workdir, 'samples', 'step_12', 'samples.png'))


def test_a_resumed_run_ends_bitwise_equal(run, tmp_path):
  config, _, state = run
  short = tiny_config()
  short.training.n_iters = 6
  workdir = str(tmp_path)
  train.train(short, workdir)
  resumed = train.train(config, workdir)
  jax.tree.map(np.testing.assert_array_equal, resumed.params, state.params)
  jax.tree.map(np.testing.assert_array_equal, resumed.discriminator_params,
               state.discriminator_params)


def test_eval_reports_psnr_and_ssim_of_the_whole_test_split(run):
  config, workdir, state = run
  report, = evaluate.evaluate(config, workdir)
  parts = autoencoder_training.from_config(config)
  images = next(datasets.get_dataset(config, 'test', 1000, evaluation=True))
  originals = images['x'][images['mask']]
  decoded = parts.autoencoder.apply({'params': state.params['autoencoder']},
                                    jnp.asarray(2 * originals - 1))
  rebuilt = np.round(np.clip((np.asarray(decoded) + 1) / 2, 0, 1) * 255) / 255
  mse = np.mean((rebuilt.astype(np.float64) - originals)**2, axis=(1, 2, 3))
  assert report['num_examples'] == len(originals) == 179
  np.testing.assert_allclose(report['psnr'], np.mean(10 * np.log10(1 / mse)), rtol=1e-5)
  assert 0 < report['ssim'] < 1 and report['psnr_standard_error'] > 0
  assert 'rfid' not in report  # no Inception weights here
  with Image.open(report['picture']) as picture:
    assert picture.size[0] > 16 * 16  # 16 columns of 16-pixel images with gaps
  again, = evaluate.evaluate(config, workdir)  # reused, not recomputed
  assert again == report


def test_sampling_an_autoencoder_run_is_refused(run):
  config, workdir, _ = run
  with pytest.raises(ValueError, match="have no samples"):
    evaluate.sample(config, workdir)


def test_missing_lpips_files_fail_before_any_work(tmp_path):
  config = tiny_config()
  config.autoencoder.update(perceptual_weight=1.0,
                            perceptual_weights=str(tmp_path / 'nowhere'))
  workdir = tmp_path / 'run'
  with pytest.raises(FileNotFoundError, match='vgg16-397923af.pth'):
    train.train(config, str(workdir))
  assert not workdir.exists()


def test_the_lpips_term_is_added_at_every_pixel():
  config = tiny_config()
  config.autoencoder.update(perceptual_weight=0.5, perceptual_weights=LPIPS_FIXTURE,
                            discriminator_weight=0.0, sample_posterior=False)
  parts = autoencoder_training.from_config(config)
  state = methods.get_method(config).initial_state
  images = 2 * next(datasets.get_dataset(config, 'test', 4, evaluation=True))['x'] - 1
  params = {**state.params, 'log_scale': jnp.asarray(0.2)}
  loss_fn = autoencoder_training.get_autoencoder_loss(parts.autoencoder, parts.discriminator,
                                                      parts.objective, parts.perceptual)
  loss, aux = jax.jit(loss_fn)(params, None, jax.random.PRNGKey(0), images, jnp.asarray(0))
  rebuilt = parts.autoencoder.apply({'params': params['autoencoder']}, images)
  distance = np.asarray(lpips.apply(lpips.load_lpips(LPIPS_FIXTURE), images, rebuilt))
  per_pixel = np.abs(images - np.asarray(rebuilt)) + 0.5 * distance[:, None, None, None]
  nll = np.mean(np.sum(per_pixel / np.exp(0.2) + 0.2, axis=(1, 2, 3)))
  np.testing.assert_allclose(aux['nll'], nll, rtol=1e-5)
  np.testing.assert_allclose(aux['perceptual'], distance.mean(), rtol=1e-5)
  assert distance.min() > 0


def test_checkpoints_hold_both_networks(run):
  config, workdir, state = run
  store = checkpoints.CheckpointStore(os.path.join(workdir, 'checkpoints'))
  assert store.steps() == [6, 12]
  store.close()
  assert state.discriminator_params is not None and 'log_scale' in state.params
