"""The noise-conditional Wide-ResNet classifier against the official implementation's parameter
tree, outputs, logit function and guidance gradient (tests/data/classifier_official.json), and its
composition with controllable.conditional_score_fn."""
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from score_sde import controllable
from score_sde import sde as sde_lib
from score_sde.models import classifier

from .test_ddpm import numpy_params, tree_paths

OFFICIAL = json.loads((pathlib.Path(__file__).parent / 'data' / 'classifier_official.json')
                      .read_text())
SMALL = OFFICIAL['small']
SDE = sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=1000)


def classifier_config(blocks_per_group=1, channel_multiplier=1, num_classes=10):
  config = ml_collections.ConfigDict()
  config.classifier = ml_collections.ConfigDict(dict(
      blocks_per_group=blocks_per_group, channel_multiplier=channel_multiplier,
      num_classes=num_classes))
  return config


def init_shapes(config, size):
  return jax.eval_shape(
      lambda: classifier.init_classifier(jax.random.PRNGKey(0), config, (size, size, 3))[1])


@pytest.fixture(scope='module')
def small():
  """The small classifier of the fixture, its numpy parameters and its input x (2, 8, 8, 3)."""
  config = classifier_config()
  variables = numpy_params(init_shapes(config, 8), SMALL['param_seed'])
  x = np.random.RandomState(SMALL['input_seed']).rand(2, 8, 8, 3).astype(np.float32)
  return classifier.get_classifier(config), variables, jnp.asarray(x)


@pytest.fixture(scope='module')
def outputs(small):
  """Everything computed from the small classifier, in one compiled function: its logits at the
  fixture's sigmas; logit_fn at its times; the conditional score with guidance scale 2 around a
  constant score of 0.25; the gradient of the cross-entropy at the labels w.r.t. the params."""
  model, variables, x = small
  sigmas, times = jnp.asarray(SMALL['sigmas']), jnp.asarray(SMALL['times'])
  labels = jnp.asarray(SMALL['labels'])

  def cross_entropy(params):
    logits = model.apply({'params': params}, x, sigmas)
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(2), labels])

  @jax.jit
  def run(variables):
    logit_fn = classifier.get_logit_fn(model, variables, SDE)
    guided = controllable.conditional_score_fn(lambda x, t: jnp.full_like(x, 0.25), logit_fn,
                                               labels, guidance_scale=2.0)
    return {'logits': model.apply(variables, x, sigmas), 'logit_fn': logit_fn(x, times),
            'guided_score': guided(x, times), 'grads': jax.grad(cross_entropy)(variables['params'])}

  return run(variables)


def assert_close(actual, expected):
  expected = np.asarray(expected)
  assert actual.shape == expected.shape
  np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_wrn_28_10_has_the_official_parameter_tree():
  """The configuration of the released CIFAR-10 classifier: 38,913,242 parameters, no batch
  statistics."""
  variables = init_shapes(classifier_config(4, 10, 10), 32)
  assert list(variables) == ['params']
  paths = tree_paths(variables['params'])
  assert paths == OFFICIAL['wrn_28_10']['params']
  assert sum(int(np.prod(shape)) for _, shape in paths) == OFFICIAL['wrn_28_10']['count']
  assert OFFICIAL['wrn_28_10']['count'] == 38_913_242


def test_init_creates_official_parameter_order():
  order = []

  def init():
    variables = classifier.init_classifier(jax.random.PRNGKey(0), classifier_config(), (8, 8, 3))[1]
    order.extend(path for path, _ in tree_paths(variables['params']))
    return variables

  jax.eval_shape(init)
  assert order == SMALL['creation_order']


def test_logits_equal_official(outputs):
  assert outputs['logits'].shape == (2, 10)
  assert_close(outputs['logits'], SMALL['logits'])


def test_logit_fn_feeds_normalised_images_and_ve_sigma(small, outputs):
  assert_close(outputs['logit_fn'], SMALL['logit_fn_logits'])
  with pytest.raises(ValueError, match='VESDE'):
    classifier.get_logit_fn(small[0], small[1], sde_lib.VPSDE())


def test_conditional_score_adds_the_official_guidance_gradient(outputs):
  """conditional_score_fn(score_fn, logit_fn, labels, w) = score + w grad_x log p_t(y | x)."""
  assert_close(outputs['guided_score'] - 0.25, 2.0 * np.asarray(SMALL['guidance_gradient']))


def test_backward_gives_finite_nonzero_gradients(outputs):
  flat = jax.tree_util.tree_flatten_with_path(outputs['grads'])[0]
  norms = {jax.tree_util.keystr(path): np.linalg.norm(g) for path, g in flat}
  assert all(np.isfinite(list(norms.values())))
  # the Fourier features are fixed (not trained): their gradient is zero, every other is not
  assert [k for k, v in norms.items() if v == 0] == ["['GaussianFourierProjection_0']['W']"]


def test_init_is_deterministic_and_has_official_scales():
  """He (fan-out, normal) conv kernels: Var = 2 / (9 out); last dense kernel U(-1, 1) /
  sqrt(num_classes); Fourier weights N(0, 16^2). ('rbg' keys: compiling flax's threefry key
  derivation for every module would cost ~10 s of CPU.)"""
  config = classifier_config(channel_multiplier=2)
  init = jax.jit(lambda key: classifier.init_classifier(key, config, (8, 8, 3))[1]['params'])
  first, same, other = (init(jax.random.key(seed, impl='rbg')) for seed in (0, 0, 1))
  assert all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.array_equal, first, same)))
  assert not np.allclose(first['init_conv']['kernel'], other['init_conv']['kernel'])
  conv = first['WideResnetGroup_2']['WideResnetBlock_0']['conv2']['kernel']  # 3x3, 128 -> 128
  assert np.std(conv) == pytest.approx((2 / (9 * 128))**0.5, rel=0.05)
  logit_kernel = np.asarray(first['Dense_2']['kernel'])
  assert np.abs(logit_kernel).max() <= 10**-0.5
  assert np.std(logit_kernel) == pytest.approx((1 / 30)**0.5, rel=0.15)
  assert np.std(first['GaussianFourierProjection_0']['W']) == pytest.approx(16, rel=0.2)


def test_bad_config_values_are_named():
  with pytest.raises(ValueError, match='classifier.channel_multiplier'):
    classifier.get_classifier(classifier_config(channel_multiplier=0))
