"""The evaluation driver: checkpoint ranges, whole-split loss and bits/dim with padding, samples,
FID / KID / IS on images, resuming an interrupted evaluation, and its refusals."""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from score_sde import checkpoints, datasets, evaluate, evaluation, inception, likelihood, losses
from score_sde import digits_features, image_datasets, methods, score_eval, train

from .helpers import tiny_config
from .inception_weights import random_state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def toy_config():
  config = tiny_config()  # checkpoints at steps 10 and 20
  config.eval.update(num_samples=50, batch_size=32, bpd_num_samples=50, begin_ckpt=1, end_ckpt=3)
  return config


@pytest.fixture(scope='module')
def toy_run(tmp_path_factory):
  config = toy_config()
  workdir = str(tmp_path_factory.mktemp('toy'))
  train.train(config, workdir)
  return config, workdir, evaluate.evaluate(config, workdir)


def restore(config, workdir, step):
  store = checkpoints.CheckpointStore(os.path.join(workdir, 'checkpoints'))
  state, _ = store.restore(step, methods.build_experiment(config).initial_state)
  store.close()
  return state


def test_existing_checkpoints_of_the_range_are_evaluated(toy_run, capsys):
  _, workdir, reports = toy_run
  assert [r['step'] for r in reports] == [10, 20]  # checkpoint 3 (step 30) was never written
  for report in reports:
    assert report['num_samples'] == 50 and report['nfe'] == 50
    assert report['bpd_num_values'] == 50 and report['test_loss_num_examples'] == 50
    with open(report['report']) as f:
      assert json.load(f)['bpd'] == report['bpd']
  with open(os.path.join(workdir, 'eval', 'reports.jsonl')) as f:
    assert [json.loads(line)['step'] for line in f] == [10, 20]


def test_padded_batches_are_masked_out(toy_run):
  # 50 points in global batches of 32: the second batch holds 18 points and 14 rows of padding.
  config, workdir, reports = toy_run
  state = restore(config, workdir, 20)
  batches = list(datasets.get_dataset(config, 'test', 32, evaluation=True, max_examples=50))
  example_losses = jax.jit(losses.get_eval_step(config, methods.build_experiment(config).sde,
                                                methods.build_experiment(config).model))
  key = jax.random.PRNGKey(config.seed + 4)
  values = np.concatenate([np.asarray(example_losses(state, jax.random.fold_in(key, k), b['x']))
                           [b['mask']] for k, b in enumerate(batches)])
  assert len(values) == 50
  np.testing.assert_allclose(reports[1]['test_loss'], values.mean(), rtol=1e-6)
  experiment = methods.build_experiment(config)
  bpd_fn = likelihood.get_model_bpd_fn(config, experiment.sde, experiment.model)
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed + 5), 0)
  direct = [np.asarray(bpd_fn({'params': state.params_ema}, jax.random.fold_in(key, k),
                              b['x'])[0])[b['mask']] for k, b in enumerate(batches)]
  stored = np.load(os.path.join(workdir, 'eval', 'step_20', 'bpd_repeat_0.npz'))['bpd']
  np.testing.assert_allclose(stored, np.concatenate(direct), rtol=1e-6)


def test_rerun_reuses_files_and_an_interrupted_one_resumes(toy_run, tmp_path):
  config, workdir, reports = toy_run
  again = evaluate.evaluate(config, workdir)  # everything done: nothing recomputed or rewritten
  assert again == reports
  with open(os.path.join(workdir, 'eval', 'reports.jsonl')) as f:
    assert len(f.readlines()) == 2
  # An evaluation stopped after its bits/dim pass: report, loss and samples not yet written.
  copy = str(tmp_path / 'run')
  shutil.copytree(workdir, copy)
  step_dir = os.path.join(copy, 'eval', 'step_20')
  for name in ('report.json', 'loss.json', 'samples.npz', 'samples/batch_00001.npz'):
    os.remove(os.path.join(step_dir, name))
  kept = os.path.join(step_dir, 'bpd_repeat_0.npz')
  with open(kept, 'r+b') as f:  # marks the file: reused as it is, not recomputed
    np.savez(f, **{**dict(np.load(kept)), 'bpd': np.full(50, 7.0, np.float32)})
  resumed = evaluate.evaluate(config, copy)
  assert resumed[1]['bpd'] == pytest.approx(7.0)
  for name in ('test_loss', 'energy_distance', 'num_samples'):
    assert resumed[1][name] == pytest.approx(reports[1][name], rel=1e-6)


def test_other_settings_need_a_new_eval_folder(toy_run):
  config, workdir, _ = toy_run
  config = toy_config()
  config.sampling.snr = 0.2
  with pytest.raises(ValueError, match=r'sampling.snr\); use a new --eval_folder'):
    evaluate.evaluate(config, workdir)
  config.eval.update(end_ckpt=1, enable_bpd=False)
  assert [r['step'] for r in evaluate.evaluate(config, workdir, 'eval_snr_0.2')] == [10]


def test_missing_checkpoints_are_reported_and_never_waited_for_forever(toy_run):
  config, workdir, _ = toy_run
  config = toy_config()
  config.eval.update(begin_ckpt=5, end_ckpt=6)
  with pytest.raises(FileNotFoundError, match=r'None of checkpoints \[50, 60\].*steps \[10, 20\]'):
    evaluate.evaluate(config, workdir)
  with pytest.raises(FileNotFoundError, match=r'No checkpoint of \[50, 60\] appeared'):
    evaluate.evaluate(config, workdir, watch_timeout=0.3)
  config.eval.update(begin_ckpt=3, end_ckpt=1)
  with pytest.raises(ValueError, match=r'eval.end_ckpt = 1 must be >= eval.begin_ckpt = 3'):
    evaluate.evaluate(config, workdir)


def digits_config():
  config = tiny_config()
  config.data.update(dataset='digits', image_size=8, num_channels=1, random_flip=False,
                     uniform_dequantization=False, dequantization='uniform', centered=True)
  config.likelihood.divergence = 'hutchinson_rademacher'
  config.training.update(n_iters=10, snapshot_freq=10)
  config.eval.update(begin_ckpt=1, end_ckpt=1, num_samples=8, batch_size=8, enable_loss=True,
                     bpd_num_samples=10)
  return config


def test_image_evaluation_with_fid_kid_and_inception_score(tmp_path):
  # Random Inception weights in our .npz layout; the reference statistics from the script.
  weights = str(tmp_path / 'inception.npz')
  params = inception.params_from_state_dict(random_state_dict(0))
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  np.savez(weights, **{'/'.join(k.key for k in path): np.asarray(v) for path, v in flat})
  stats = str(tmp_path / 'digits_stats.npz')
  script = subprocess.run(
      [sys.executable, 'scripts/fid_stats.py', '--config', 'configs/digits/ddpmpp_vp.py',
       f'--config.eval.inception_weights={weights}',
       '--out', stats, '--max_examples', '16', '--batch_size', '8'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert script.returncode == 0, script.stderr[-2000:]
  reference = np.load(stats)
  assert reference['pool_3'].shape == (16, 2048) and int(reference['count']) == 16

  config = digits_config()
  config.eval.update(inception_weights=weights, fid_stats=stats)
  workdir = str(tmp_path / 'run')
  train.train(config, workdir)
  report = evaluate.evaluate(config, workdir)[0]
  assert report['test_loss_num_examples'] == datasets.num_examples(config, 'test') == 179
  assert report['bpd_num_values'] == 10 and 0 < report['bpd'] < 20
  out = os.path.join(workdir, 'eval', 'step_10')
  samples = np.load(os.path.join(out, 'samples.npz'))['samples']
  assert samples.shape == (8, 8, 8, 1) and samples.dtype == np.uint8
  with open(os.path.join(out, 'samples.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  # The metrics are evaluation's formulas on the Inception features of the stored samples.
  features = inception.get_inception_fn(inception.load_inception(weights))(samples / 255.0)
  mu, sigma = evaluation.feature_statistics(features['pool_3'])
  np.testing.assert_allclose(report['fid'], evaluation.frechet_distance(
      mu, sigma, reference['mu'], reference['sigma']), rtol=1e-4)
  np.testing.assert_allclose(report['kid'], evaluation.kernel_inception_distance(
      np.asarray(features['pool_3']), reference['pool_3'])[0], rtol=1e-3, atol=1e-6)
  # FD-digits: the digits classifier's features of the same stored samples.
  np.testing.assert_allclose(report['fd_digits'], digits_features.DigitsMetric().frechet_distance(
      samples / 255.0), rtol=1e-6)
  assert 0 < report['fd_digits_train_vs_test'] < report['fd_digits']  # 10 steps: far from data
  expected_is = evaluation.inception_score(features['logits'], num_splits=8)[0]
  assert np.isfinite(expected_is)
  np.testing.assert_allclose(report['inception_score'], expected_is, rtol=1e-4)


def test_fid_without_weights_fails_before_any_work(tmp_path, monkeypatch):
  monkeypatch.delenv(inception.ENV_WEIGHTS, raising=False)
  config = digits_config()
  config.eval.update(enable_sampling=True, fid_stats=str(tmp_path / 'stats.npz'))
  with pytest.raises(FileNotFoundError, match='FID Inception weights are needed'):
    evaluate.evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')


def test_digit_accuracy_reads_sample_k_as_class_k_mod_num_classes():
  config = digits_config()
  config.model.num_classes = 10
  images, labels = image_datasets.digits_split('test')
  by_class = [images[labels == c] for c in range(10)]
  in_order = np.stack([by_class[k % 10][k // 10] for k in range(100)])  # sample k shows k mod 10
  report = score_eval._digits_sample_quality(config, in_order)
  assert report['digit_accuracy'] >= 0.97
  rolled = np.roll(in_order, 1, axis=0)  # sample k shows k - 1 mod 10
  assert score_eval._digits_sample_quality(config, rolled)['digit_accuracy'] <= 0.03
  config.model.num_classes = None
  assert 'digit_accuracy' not in score_eval._digits_sample_quality(config, in_order)
