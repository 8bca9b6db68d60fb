"""Model registry and the score conventions of get_score_fn (those of the official code)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import models
from score_sde import sde as sde_lib

from .helpers import tiny_config


@models.register_model(name='label_echo')
class LabelEcho(nn.Module):
  """Test model whose output is its label broadcast to the input's shape."""

  config: object

  @nn.compact
  def __call__(self, x, labels, train=False):
    return jnp.broadcast_to(labels.astype(jnp.float32).reshape(-1, 1), x.shape)


T = jnp.array([1e-3, 0.3, 0.7, 1.0])
X = jnp.ones((4, 2))


def echo_score(sde, continuous):
  config = tiny_config()
  config.model.name = 'label_echo'
  model, variables = models.init_model(jax.random.PRNGKey(0), config, (2,))
  return np.asarray(models.get_score_fn(sde, model, variables, continuous=continuous)(X, T))[:, 0]


def test_vp_continuous_feeds_999t_and_divides_by_minus_std():
  sde = sde_lib.VPSDE(N=1000)
  std = np.asarray(sde.marginal_prob(X, T)[1])
  np.testing.assert_allclose(echo_score(sde, True), -999 * np.asarray(T) / std, rtol=1e-5)


def test_subvp_always_uses_continuous_convention():
  sde = sde_lib.subVPSDE(N=1000)
  std = np.asarray(sde.marginal_prob(X, T)[1])
  for continuous in (True, False):
    np.testing.assert_allclose(echo_score(sde, continuous), -999 * np.asarray(T) / std, rtol=1e-5)


def test_vp_discrete_feeds_integer_step_and_ddpm_std():
  sde = sde_lib.VPSDE(N=1000)
  index = np.floor(np.asarray(T) * 999).astype(int)
  np.testing.assert_allclose(echo_score(sde, False),
                             -index / sde.sqrt_1m_alphas_cumprod[index], rtol=1e-5)


def test_ve_continuous_feeds_sigma_and_discrete_feeds_descending_index():
  sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=1000)
  np.testing.assert_allclose(echo_score(sde, True), 0.01 * 5000.0**np.asarray(T), rtol=1e-5)
  index = np.floor(np.asarray(T) * 999).astype(int)
  np.testing.assert_array_equal(echo_score(sde, False), 999 - index)
  # The label indexes the descending sigmas at the sigma the discretization uses at time t.
  np.testing.assert_allclose(sde.discrete_sigmas[::-1][999 - index], sde.discrete_sigmas[index])


@pytest.mark.parametrize('shape', [(2,), (4, 4, 1)])
def test_mlp_output_is_shaped_like_input(shape):
  config = tiny_config(sde='vesde')
  model, variables = models.init_model(jax.random.PRNGKey(0), config, shape)
  x, labels = jnp.ones((3, *shape)), jnp.array([0.1, 1.0, 10.0])
  out = model.apply(variables, x, labels)
  assert out.shape == x.shape
  # scale_by_sigma: the raw network output is divided by the label.
  config.model.scale_by_sigma = False
  unscaled = models.get_model(config).apply(variables, x, labels)
  np.testing.assert_allclose(out, unscaled / labels.reshape((3,) + (1,) * len(shape)), rtol=1e-5)


def test_unknown_model_name_is_refused():
  config = tiny_config()
  config.model.name = 'unet'
  with pytest.raises(ValueError, match=r"model.name = 'unet' is not supported; allowed: \["):
    models.get_model(config)


def test_discrete_ve_mlp_divides_by_the_sigma_of_its_step_index():
  config = tiny_config(sde='vesde')
  config.training.continuous = False
  config.model.embedding_type = 'positional'
  model, variables = models.init_model(jax.random.PRNGKey(0), config, (2,))
  x, labels = jnp.ones((3, 2)), jnp.array([0, 10, config.model.num_scales - 1])
  out = model.apply(variables, x, labels)
  config.model.scale_by_sigma = False
  unscaled = models.get_model(config).apply(variables, x, labels)
  sigmas = np.array([config.model.sigma_max, 0.0, config.model.sigma_min])
  sigmas[1] = config.model.sigma_max * (config.model.sigma_min / config.model.sigma_max)**(
      10 / (config.model.num_scales - 1))
  np.testing.assert_allclose(out, unscaled / sigmas[:, None], rtol=1e-5)


@pytest.mark.parametrize('sde,continuous', [('vpsde', True), ('vesde', False)])
def test_fourier_embedding_needs_continuous_ve_labels(sde, continuous):
  config = tiny_config(sde=sde)
  config.training.continuous = continuous
  config.model.embedding_type = 'fourier'
  with pytest.raises(ValueError, match="embedding_type = 'fourier' embeds log"):
    models.init_model(jax.random.PRNGKey(0), config, (2,))


def test_init_model_gives_module_inits_values_compiling_each_model_once():
  from score_sde.models import init_once
  config = tiny_config()
  config.model.num_classes = 3  # an embedding table besides the dense layers
  model, variables = models.init_model(jax.random.PRNGKey(7), config, (2,))
  params_key, dropout_key = jax.random.split(jax.random.PRNGKey(7))
  eager = model.init({'params': params_key, 'dropout': dropout_key}, jnp.zeros((1, 2)),
                     jnp.zeros((1,), jnp.int32), train=False, class_labels=jnp.full((1,), 3))
  leaves, eager_leaves = jax.tree.leaves(variables), jax.tree.leaves(eager)
  assert jax.tree.structure(variables) == jax.tree.structure(dict(eager)) and len(leaves) > 6
  for leaf, expected in zip(leaves, eager_leaves):
    np.testing.assert_allclose(leaf, expected, rtol=1e-6, atol=1e-7)
  compiled = len(init_once._compiled)
  _, again = models.init_model(jax.random.PRNGKey(8), config, (2,))  # a model built again
  assert len(init_once._compiled) == compiled
  assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(again), leaves))  # own draws
  config.model.nf = 32
  models.init_model(jax.random.PRNGKey(7), config, (2,))
  assert len(init_once._compiled) == compiled + 1


def test_a_fully_convolutional_model_initialises_at_any_input_size():
  """jit drops the example input from the lowered init of a model whose parameters do not depend
  on the input size; the compiled-init cache must still tell the sizes apart."""
  from score_sde.models import init_once

  class Convolution(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Conv(3, (3, 3))(x)

  key = jax.random.PRNGKey(0)
  module = Convolution()
  for size in (16, 8):
    got = init_once.init_variables(module, key, jnp.zeros((1, size, size, 1)))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got,
                 dict(module.init(key, jnp.zeros((1, size, size, 1)))))
