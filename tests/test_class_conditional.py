"""Class-conditional score models (model.num_classes) and label dropout (training.label_dropout):
the dropout rate, the class embedding of NCSN++ / DDPM / MLP and their unchanged unconditional
parameter trees, the refusals, and one training step and evaluation on the labelled digits."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.digits import ddpmpp_vp
from score_sde import evaluate, losses, metrics_log, models, train
from score_sde import sde as sde_lib

from .helpers import tiny_config

NUM_CLASSES = 3
IMAGE = (8, 8, 1)


@pytest.mark.parametrize('rate', [0.1, 0.5])
def test_drop_labels_honours_the_rate_and_keeps_the_other_labels(rate):
  n = 20000
  labels = jax.random.randint(jax.random.PRNGKey(0), (n,), 0, 10)
  dropped = np.asarray(losses.drop_labels(jax.random.PRNGKey(1), labels, rate, 10))
  is_null = dropped == 10
  standard_error = np.sqrt(rate * (1 - rate) / n)
  assert abs(is_null.mean() - rate) < 4.5 * standard_error
  np.testing.assert_array_equal(dropped[~is_null], np.asarray(labels)[~is_null])
  assert dropped.dtype == labels.dtype


def test_drop_labels_at_rate_zero_never_drops():
  labels = jnp.arange(20000) % 10
  np.testing.assert_array_equal(losses.drop_labels(jax.random.PRNGKey(1), labels, 0.0, 10), labels)


def ncsnpp_config():
  """DDPM++ of the digits config at nf = 8 with one resolution level, on 8x8x1 images."""
  config = ddpmpp_vp.get_config()
  config.model.update(nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), init_scale=1.0)
  return config


def ddpm_config():
  config = ncsnpp_config()
  # GroupNorm has 32 groups: at 32 channels it would remove the embedding, a per-channel shift.
  config.model.update(name='ddpm', nf=64)
  return config


def mlp_config():
  return tiny_config()


def force(section, field: str, value) -> None:
  """Sets a field of any type, past the type of its placeholder."""
  del section[field]
  section[field] = value


CONFIGS = {'ncsnpp': (ncsnpp_config, IMAGE), 'ddpm': (ddpm_config, IMAGE),
           'mlp': (mlp_config, (2,))}


def fast_jit(fn, *args):
  """fn(*args), jit-compiled at XLA optimisation level 0 (these tiny networks compile slowly)."""
  options = {'xla_backend_optimization_level': 0}
  return jax.jit(fn).lower(*args).compile(compiler_options=options)(*args)


def init_params(config, shape):
  """The initial parameters of the config's model."""
  return fast_jit(lambda key: models.init_model(key, config, shape)[1]['params'],
                  jax.random.PRNGKey(0))


@pytest.fixture(scope='module', params=list(CONFIGS))
def built(request):
  """(config, shape, unconditional parameter shapes, conditional model and parameters) of one
  model; the parameters are perturbed so that no zero-initialised layer hides the labels."""
  make_config, shape = CONFIGS[request.param]
  unconditional = jax.eval_shape(
      lambda: models.init_model(jax.random.PRNGKey(0), make_config(), shape)[1]['params'])
  config = make_config()
  config.model.num_classes = NUM_CLASSES
  model = models.get_model(config)
  leaves, treedef = jax.tree.flatten(init_params(config, shape))
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  params = treedef.unflatten([p + 0.1 * jax.random.normal(k, p.shape)
                              for p, k in zip(leaves, keys)])
  return config, shape, unconditional, model, params


def temb_width(config) -> int:
  """The width of the time embedding: 4 nf for NCSN++ / DDPM, nf for the MLP."""
  return config.model.nf * (1 if config.model.name == 'mlp' else 4)


def test_conditional_tree_is_the_unconditional_tree_plus_one_table(built):
  config, _, unconditional, _, params = built
  assert set(params) == set(unconditional) | {'class_embedding'}
  shapes = jax.tree.map(lambda p: p.shape, params)
  assert shapes.pop('class_embedding') == {'embedding': (NUM_CLASSES + 1, temb_width(config))}
  assert shapes == jax.tree.map(lambda p: p.shape, unconditional)


def test_outputs_depend_on_the_class_and_none_is_the_null_label(built):
  _, shape, _, model, params = built
  x = jax.random.uniform(jax.random.PRNGKey(2), (2, *shape))
  t = jnp.array([0.3, 0.8])
  classes = jnp.arange(NUM_CLASSES + 1, dtype=jnp.int32)
  outputs = np.asarray(fast_jit(jax.vmap(lambda c: model.apply(
      {'params': params}, x, 999.0 * t, class_labels=jnp.full((2,), c))), classes))
  for i in range(NUM_CLASSES + 1):
    for j in range(i):
      assert np.abs(outputs[i] - outputs[j]).max() > 1e-4, (i, j)
  score_fn = models.get_score_fn(sde_lib.VPSDE(), model, {'params': params}, continuous=True)
  unconditional = score_fn(x, t)
  null = score_fn(x, t, class_labels=jnp.full((2,), NUM_CLASSES))
  np.testing.assert_allclose(unconditional, null, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', list(CONFIGS))
def test_unconditional_model_refuses_class_labels(name):
  make_config, shape = CONFIGS[name]
  model = models.get_model(make_config())
  with pytest.raises(ValueError, match='model.num_classes'):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape)),
                                      jnp.ones((1,)), class_labels=jnp.zeros(1, int)))


def test_models_without_class_conditioning_refuse_labels_in_model_fn():
  config = tiny_config()
  config.model.update(name='ncsnv2_64', normalization='InstanceNorm++', nf=8)
  model_fn = models.get_model_fn(models.get_model(config), {})
  with pytest.raises(ValueError, match='takes no class labels'):
    model_fn(jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,), int), class_labels=jnp.zeros(1, int))


@pytest.mark.parametrize('name', ['ncsnpp', 'ddpm'])
def test_class_conditional_model_needs_the_time_embedding(name):
  config = CONFIGS[name][0]()
  config.model.update(num_classes=NUM_CLASSES, conditional=False)
  with pytest.raises(ValueError, match=r'model.num_classes = 3 .* model.conditional = True'):
    models.init_model(jax.random.PRNGKey(0), config, IMAGE)


@pytest.mark.parametrize('value', [0, -2, 1.5])
def test_bad_num_classes_is_refused(value):
  config = tiny_config()
  force(config.model, 'num_classes', value)
  with pytest.raises(ValueError, match=f'model.num_classes = {value} must be a positive integer'):
    models.init_model(jax.random.PRNGKey(0), config, (2,))


@pytest.mark.parametrize('value', [-0.1, 1.0, 2, True, 'half'])
def test_bad_label_dropout_is_refused(value):
  config = tiny_config()
  config.model.num_classes = NUM_CLASSES
  force(config.training, 'label_dropout', value)
  with pytest.raises(ValueError, match=r'training.label_dropout = .* must be a number in \[0, 1\)'):
    losses.get_loss_fn(config, sde_lib.get_sde(config), None, train=True)


def test_label_dropout_without_class_conditioning_is_refused():
  config = tiny_config()
  config.training.label_dropout = 0.1
  with pytest.raises(ValueError, match='training.label_dropout = 0.1 needs a conditional model'):
    losses.get_loss_fn(config, sde_lib.get_sde(config), None, train=True)


@pytest.fixture(scope='module')
def toy_losses():
  """Eval and train losses of a class-conditional MLP with label dropout 0.5, and of the same
  config without num_classes; a batch of points and labels."""
  config = tiny_config()
  sde = sde_lib.get_sde(config)
  model, variables = models.init_model(jax.random.PRNGKey(0), config, (2,))
  unconditional = (jax.jit(losses.get_loss_fn(config, sde, model, train=True)), variables)
  config = tiny_config()
  config.model.num_classes = NUM_CLASSES
  config.training.label_dropout = 0.5
  model, conditional_variables = models.init_model(jax.random.PRNGKey(0), config, (2,))
  fns = {train_: jax.jit(losses.get_loss_fn(config, sde, model, train=train_, per_example=True))
         for train_ in (False, True)}
  x0 = jax.random.normal(jax.random.PRNGKey(3), (64, 2))
  labels = jnp.arange(64, dtype=jnp.int32) % NUM_CLASSES
  return config, sde, model, unconditional, fns, conditional_variables, x0, labels


def test_unconditional_loss_ignores_labels(toy_losses):
  *_, (loss_fn, variables), _, _, x0, labels = toy_losses
  key = jax.random.PRNGKey(4)
  assert loss_fn(variables['params'], key, x0, labels) == loss_fn(variables['params'], key, x0)


def test_train_loss_drops_labels_with_a_key_split_off_and_eval_loss_keeps_them(toy_losses):
  config, sde, model, _, fns, variables, x0, labels = toy_losses
  key = jax.random.PRNGKey(4)
  loss_key, drop_key = jax.random.split(key)
  dropped = losses.drop_labels(drop_key, labels, 0.5, NUM_CLASSES)

  def reference(class_labels, train_):
    score_fn = models.get_score_fn(sde, model, variables, train=train_, continuous=True)
    return losses.continuous_dsm_loss(loss_key if train_ else key, x0, score_fn, sde,
                                      reduce_mean=True, likelihood_weighting=False,
                                      class_labels=class_labels)

  np.testing.assert_allclose(fns[True](variables['params'], key, x0, labels),
                             reference(dropped, True), rtol=1e-5)
  np.testing.assert_allclose(fns[False](variables['params'], key, x0, labels),
                             reference(labels, False), rtol=1e-5)


def test_conditional_loss_without_labels_is_refused(toy_losses):
  *_, fns, variables, x0, _ = toy_losses
  with pytest.raises(ValueError, match="the dataset must yield 'label'"):
    fns[True](variables['params'], jax.random.PRNGKey(0), x0)


def test_conditional_model_on_unlabelled_data_is_refused_before_anything_runs(tmp_path):
  config = tiny_config()
  config.model.num_classes = NUM_CLASSES
  workdir = str(tmp_path / 'run')
  with pytest.raises(ValueError, match=r"data.dataset = 'checkerboard' yields no 'label'"):
    train.train(config, workdir)
  assert not os.path.exists(workdir)


def test_digits_class_conditional_train_step_and_eval_loss(tmp_path):
  """Two real training steps (with an eval loss) of a class-conditional DDPM++ with label
  dropout on the labelled digits, then the eval loss of the checkpoint over the test split."""
  config = ncsnpp_config()
  config.model.update(num_classes=10, init_scale=0.0)
  config.training.update(batch_size=16, n_iters=2, snapshot_freq=2,
                         snapshot_freq_for_preemption=2, log_freq=1, eval_freq=1,
                         label_dropout=0.2)
  config.eval.update(begin_ckpt=1, end_ckpt=1, enable_bpd=False, enable_sampling=False)
  workdir = str(tmp_path)
  state = train.train(config, workdir)
  assert int(state.step) == 2
  assert state.params['class_embedding']['embedding'].shape == (11, 32)
  records = metrics_log.read(os.path.join(workdir, 'metrics.jsonl'))
  logged = [r[k] for r in records for k in ('train/loss', 'eval/loss') if k in r]
  assert len(logged) == 4 and np.all(np.isfinite(logged))
  report = evaluate.evaluate(config, workdir)[0]
  assert report['test_loss_num_examples'] == 179 and np.isfinite(report['test_loss'])
