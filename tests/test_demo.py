"""The demo (`make demo`): its trained model's samples match the data.

Trains configs/toy/vp.py exactly as the demo does (about a minute and a half on 2 cores).
"""
import json
import os
import subprocess
import sys

import pytest

from score_sde import evaluate, train
from score_sde.main import DEFAULT_CONFIG

from configs.toy import vp

SCORE_SDE = os.path.join(os.path.dirname(sys.executable), 'score-sde')


@pytest.fixture(scope='module')
def demo_report(tmp_path_factory):
  config = vp.get_config()
  workdir = str(tmp_path_factory.mktemp('demo'))
  train.train(config, workdir)
  reports = evaluate.evaluate(config, workdir)
  assert [r['step'] for r in reports] == [10000]  # the final checkpoint (eval.begin/end_ckpt 2)
  return reports[0]


def test_demo_samples_match_the_data(demo_report):
  # Energy distance (V-statistic) of 10k samples to 10k test points, against the same statistic
  # between two independent 10k draws of the data (measured: about 2x; see README).
  assert demo_report['num_samples'] == 10000
  assert demo_report['energy_distance_ratio'] < 3.0, demo_report


def test_demo_likelihood_is_above_the_data_entropy_and_close_to_it(demo_report):
  # The checkerboard is uniform on 8 unit squares: its entropy is log2(8) / 2 = 1.5 bits/dim,
  # a lower bound on any model's expected negative log-likelihood.
  assert demo_report['bpd_num_values'] == 2000
  assert demo_report['bpd'] > 1.5 - 3 * demo_report['bpd_standard_error'], demo_report
  assert demo_report['bpd'] < 1.8, demo_report


def test_demo_writes_its_picture_and_report(demo_report):
  with open(demo_report['picture'], 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  with open(demo_report['report']) as f:
    assert json.load(f)['energy_distance'] == demo_report['energy_distance']


def test_demo_uses_the_embedded_default_config():
  assert DEFAULT_CONFIG.endswith(os.path.join('configs', 'toy', 'vp.py'))


def test_cli_trains_samples_and_reports_bad_overrides(tmp_path):
  small = ['--config.model.nf=16', '--config.model.num_scales=20', '--config.training.n_iters=20',
           '--config.training.n_jitted_steps=10', '--config.training.log_freq=10',
           '--config.training.snapshot_freq=20', '--config.training.snapshot_sampling=False',
           '--config.eval.num_samples=100']
  workdir = str(tmp_path / 'run')

  def cli(*args):
    return subprocess.run([SCORE_SDE, f'--workdir={workdir}', *small, *args],
                          capture_output=True, text=True, timeout=300)

  trained = cli('--mode=train')
  assert trained.returncode == 0, trained.stderr
  assert 'Training finished' in trained.stdout
  sampled = cli('--mode=sample', '--eval_folder=draws')
  assert sampled.returncode == 0, sampled.stderr
  record = json.load(open(os.path.join(workdir, 'draws', 'step_20', 'sampling.json')))
  assert record['num_samples'] == 100 and record['nfe'] == 20
  again = cli('--mode=sample', '--eval_folder=draws')  # never overwrites: a new folder
  assert again.returncode == 0 and os.path.exists(os.path.join(workdir, 'draws', 'step_20_2'))
  bad = cli('--mode=train', '--config.training.batch_size=0')
  assert bad.returncode != 0
  assert 'training.batch_size = 0 must be a positive integer' in bad.stderr
