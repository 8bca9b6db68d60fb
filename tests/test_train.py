"""The training driver: resume (also after SIGKILL and from damaged checkpoints), the two
checkpoint directories, workdir guards, up-front config errors, non-finite losses."""
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from score_sde import checkpoints, methods, metrics_log, train

from .helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def checkpoint_steps(workdir):
  store = checkpoints.CheckpointStore(os.path.join(workdir, 'checkpoints'))
  steps = store.steps()
  store.close()
  return steps


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory):
  config = tiny_config()
  config.training.snapshot_sampling = True
  workdir = str(tmp_path_factory.mktemp('straight'))
  return config, workdir, train.train(config, workdir)


def test_resumed_run_continues_and_equals_uninterrupted_run(straight_run, tmp_path):
  config, _, straight_state = straight_run
  workdir = str(tmp_path)
  config.training.n_iters = 10
  first = train.train(config, workdir)
  assert int(first.step) == 10 and checkpoint_steps(workdir) == [10]
  config.training.n_iters = 20
  resumed = train.train(config, workdir)
  assert int(resumed.step) == 20 and checkpoint_steps(workdir) == [10, 20]
  logged = [r['step'] for r in metrics_log.read(os.path.join(workdir, 'metrics.jsonl'))
            if 'train/loss' in r]
  assert logged == [5, 10, 15, 20]
  # Same batches and random numbers: the resumed run ends bitwise equal to the straight one.
  jax.tree.map(np.testing.assert_array_equal, resumed, straight_state)


def test_snapshots_write_samples_and_pictures(straight_run):
  _, workdir, _ = straight_run
  for step in (10, 20):
    folder = os.path.join(workdir, 'samples', f'step_{step}')
    assert np.load(os.path.join(folder, 'samples.npz'))['samples'].shape == (64, 2)
    with open(os.path.join(folder, 'samples.png'), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_workdir_of_another_config_is_refused_untouched(straight_run):
  config, workdir, _ = straight_run
  other = tiny_config()
  other.model.nf = 32
  before = {f: os.path.getmtime(os.path.join(d, f)) for d, _, fs in os.walk(workdir) for f in fs}
  with pytest.raises(ValueError, match=r'different config \(model.nf: 16 -> 32\)'):
    train.train(other, workdir)
  after = {f: os.path.getmtime(os.path.join(d, f)) for d, _, fs in os.walk(workdir) for f in fs}
  assert before == after


def test_resumable_fields_may_change(straight_run):
  config, workdir, _ = straight_run
  config = tiny_config()
  config.training.update(n_iters=20, log_freq=10, snapshot_sampling=False)
  config.optim.lr = 1e-4
  assert int(train.train(config, workdir).step) == 20  # nothing left to do, and no refusal


@pytest.mark.parametrize('edit,message', [
    (lambda c: c.training.update(batch_size=0), 'training.batch_size = 0 must be a positive'),
    (lambda c: c.training.update(n_iters=-5), 'training.n_iters = -5 must be a positive'),
    (lambda c: c.training.update(sde='vp'), "training.sde = 'vp' is not supported; allowed"),
    (lambda c: c.data.update(dataset='mnist'), "data.dataset = 'mnist' is not supported"),
    (lambda c: c.model.update(name='unet'), "model.name = 'unet' is not supported"),
    (lambda c: c.sampling.update(predictor='heun'), "sampling.predictor = 'heun' is not"),
    (lambda c: c.training.__delitem__('log_freq'), 'training.log_freq is missing'),
    (lambda c: c.model.__delitem__('nf'), 'model.nf is missing'),
])
def test_bad_config_is_refused_before_anything_runs(edit, message, tmp_path):
  config = tiny_config()
  config.training.snapshot_sampling = True
  edit(config)
  workdir = str(tmp_path / 'run')
  with pytest.raises(ValueError, match=message):
    train.train(config, workdir)
  assert not os.path.exists(workdir)


def test_non_finite_loss_stops_the_run_and_keeps_good_checkpoints(tmp_path):
  config = tiny_config()
  config.optim.update(lr=1e38, warmup=0)
  config.training.update(log_freq=5, snapshot_freq=5)
  with pytest.raises(FloatingPointError, match=r'Training loss is (nan|inf) at step \d+'):
    train.train(config, str(tmp_path))
  assert checkpoint_steps(str(tmp_path)) == []


def run_worker(workdir: str, n_iters: int, out: str, *overrides: str) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, '-m', 'tests.train_worker', workdir, str(n_iters), out,
                           '--override', *overrides], cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)


PREEMPTED = dict(n_iters=120, snapshot_freq=40, snapshot_freq_for_preemption=5)


@pytest.fixture(scope='module')
def uninterrupted_preempted_run(tmp_path_factory):
  config = tiny_config()
  config.training.update(**PREEMPTED)
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  return config, workdir, train.train(config, workdir)


def test_keep_policy_of_the_two_checkpoint_directories(uninterrupted_preempted_run):
  _, workdir, _ = uninterrupted_preempted_run
  assert checkpoint_steps(workdir) == [40, 80, 120]
  # checkpoints-meta keeps only its newest step; steps saved in checkpoints/ are not repeated.
  assert os.listdir(os.path.join(workdir, 'checkpoints-meta')) == ['115']


def test_run_killed_at_any_moment_resumes_bitwise(uninterrupted_preempted_run, tmp_path):
  config, _, straight = uninterrupted_preempted_run
  overrides = [f'training.{k}={v}' for k, v in PREEMPTED.items() if k != 'n_iters']
  workdir = str(tmp_path / 'killed')
  worker = run_worker(workdir, PREEMPTED['n_iters'], str(tmp_path / 'unused.npz'), *overrides)
  meta = os.path.join(workdir, 'checkpoints-meta')
  deadline = time.monotonic() + 120
  while not (os.path.isdir(meta) and any(name.isdigit() for name in os.listdir(meta))):
    assert worker.poll() is None and time.monotonic() < deadline, worker.stderr.read()
    time.sleep(0.01)
  time.sleep(0.3)  # a few checkpoints into the run, while it trains and saves
  worker.send_signal(signal.SIGKILL)
  assert worker.wait() == -signal.SIGKILL  # killed before the end
  saved = checkpoints.TrainingCheckpoints(workdir)
  assert 0 < max(saved.kept.steps() + saved.preemption.steps()) < PREEMPTED['n_iters']
  saved.close()
  resumed = train.train(config, workdir)
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)


def test_unreadable_latest_checkpoint_falls_back_to_the_previous_one(straight_run, tmp_path):
  config, straight_workdir, straight_state = straight_run
  workdir = str(tmp_path / 'run')
  shutil.copytree(straight_workdir, workdir)
  damaged = os.path.join(workdir, 'checkpoints', '20')
  for folder, _, files in os.walk(os.path.join(damaged, 'state')):
    for name in files:
      with open(os.path.join(folder, name), 'wb') as f:
        f.write(b'\0garbage')
  with pytest.warns(UserWarning, match=r'Checkpoint step 20 .* cannot be read'):
    resumed = train.train(config, workdir)
  # Step 10 was restored and the last ten steps trained again, to the same result.
  jax.tree.map(np.testing.assert_array_equal, resumed, straight_state)
  assert os.path.isdir(damaged + '.unreadable')  # set aside, not deleted
  assert checkpoint_steps(workdir) == [10, 20]


def test_learning_and_ema_rates_come_from_the_config_on_resume(straight_run, tmp_path):
  config, straight_workdir, _ = straight_run
  workdir = str(tmp_path / 'run')
  shutil.copytree(straight_workdir, workdir)
  store = checkpoints.CheckpointStore(os.path.join(workdir, 'checkpoints'))
  saved, _ = store.restore(20, methods.build_experiment(config).initial_state)
  store.close()
  config = tiny_config()
  config.training.n_iters = 25
  config.optim.lr = 1e-30  # no visible parameter change
  config.model.ema_rate = 0.0  # EMA = the parameters
  resumed = train.train(config, workdir)
  jax.tree.map(np.testing.assert_array_equal, resumed.params, saved.params)
  jax.tree.map(np.testing.assert_array_equal, resumed.params_ema, saved.params)


def test_checkpoint_steps_are_exact_with_several_steps_per_call(tmp_path):
  config = tiny_config()
  config.training.update(n_jitted_steps=7, n_iters=24, snapshot_freq=10)
  train.train(config, str(tmp_path))
  assert checkpoint_steps(str(tmp_path)) == [10, 20, 24]
  store = checkpoints.CheckpointStore(os.path.join(str(tmp_path), 'checkpoints'))
  like = methods.build_experiment(config).initial_state
  assert [int(store.restore(s, like)[0].step) for s in (10, 20, 24)] == [10, 20, 24]
  store.close()
