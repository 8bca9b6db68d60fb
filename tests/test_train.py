"""The training driver: resume, workdir guards, up-front config errors, non-finite losses."""
import os

import jax
import numpy as np
import pytest

from score_sde import checkpoints, metrics_log, train

from .helpers import tiny_config


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
