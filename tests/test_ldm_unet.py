"""The cross-attention U-Net as a zoo model (model.name = 'ldm_unet'): it is the LDM U-Net
fed the context of its conditioning, its null condition is the one the losses drop to and
guidance mixes in, and its config errors name the field."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.latent.pairs_text import get_config as pairs_text
from score_sde import captions, conditions, losses
from score_sde import models as models_lib
from score_sde import sde as sde_lib
from score_sde.models import context, ldm_unet, unet_ldm


def config_for(conditioning):
  config = pairs_text()
  config.model.update(nf=16, ch_mult=(1, 2), context_dim=16, head_dim=8, conditioning=conditioning)
  if conditioning == 'class':
    config.model.num_classes = 10
  return config


@pytest.mark.parametrize('conditioning', [None, 'class', 'text'])
def test_the_model_is_the_unet_on_the_context_of_its_conditioning(conditioning):
  config = config_for(conditioning)
  model, variables = models_lib.init_model(jax.random.PRNGKey(0), config, (4, 4, 4))
  params = variables['params']
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 4, 4))
  labels = jnp.asarray([100.0, 700.0])
  condition = None
  if conditioning == 'class':
    condition = jnp.asarray([3, 7])
  elif conditioning == 'text':
    condition = jnp.asarray(conditions.get_conditions(config).encode(
        ['three left of eight', 'one right of two']))
  output = jax.jit(model.apply)({'params': params}, x, labels, class_labels=condition)
  if conditioning is None:
    ctx = jnp.broadcast_to(params['null_token'], (2, 1, 16))
  elif conditioning == 'class':
    ctx = context.ClassContext(10, 16).apply({'params': params['class_context']}, condition)
  else:
    ctx = context.TextContext(2 + len(captions.DIGIT_VOCABULARY), 4, 16, layers=2, heads=4).apply(
        {'params': params['text_context']}, condition)
  unet = unet_ldm.UNet(ldm_unet.unet_config(config, 4, 4))
  expected = jax.jit(unet.apply)({'params': params['unet']}, x, labels, ctx)
  # Two jitted programs round differently (seen: 1e-6 on outputs of order 0.1).
  np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-5)
  c = ldm_unet.unet_config(config, 4, 4)
  assert c.block_channels == (16, 32) and c.cross_attention == (True, True)


@pytest.mark.parametrize('conditioning', ['class', 'text'])
def test_no_condition_is_the_null_condition_the_losses_drop_to(conditioning):
  config = config_for(conditioning)
  model, variables = models_lib.init_model(jax.random.PRNGKey(0), config, (4, 4, 4))
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 4, 4))
  labels = jnp.asarray([10.0, 500.0, 900.0])
  null = conditions.get_conditions(config).null
  expected = {'class': 10, 'text': np.zeros(4)}[conditioning]
  np.testing.assert_array_equal(null, expected)
  np.testing.assert_array_equal(models_lib.example_condition(config)[0], null)
  nulls = jnp.broadcast_to(jnp.asarray(null), (3, *np.shape(null)))
  np.testing.assert_array_equal(model.apply(variables, x, labels),
                                model.apply(variables, x, labels, class_labels=nulls))
  dropped = losses.drop_labels(jax.random.PRNGKey(2), nulls + 1, 1.0 - 1e-7, null)
  np.testing.assert_array_equal(dropped, nulls)


def test_a_caption_model_trains_with_the_framework_losses():
  config = config_for('text')
  sde = sde_lib.get_sde(config)
  model, variables = models_lib.init_model(jax.random.PRNGKey(0), config, (4, 4, 4))
  loss_fn = losses.get_loss_fn(config, sde, model, train=True)
  ids = jnp.asarray(conditions.get_conditions(config).encode(['three left of eight'] * 4))
  x0 = jax.random.normal(jax.random.PRNGKey(1), (4, 4, 4, 4))
  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(variables['params'], jax.random.PRNGKey(2),
                                                     x0, ids)
  assert np.isfinite(loss)
  words = grads['text_context']['words']['embedding']
  assert np.abs(np.asarray(words)).sum() > 0  # the caption encoder trains with the model
  with pytest.raises(ValueError, match="its loss needs the batches' conditions"):
    loss_fn(variables['params'], jax.random.PRNGKey(2), x0)


def test_scale_by_sigma_divides_by_the_noise_label():
  config = config_for(None)
  config.model.scale_by_sigma = True
  model, variables = models_lib.init_model(jax.random.PRNGKey(0), config, (4, 4, 4))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 4, 4))
  plain = config_for(None)
  reference = ldm_unet.LatentUNet(plain).apply(variables, x, jnp.asarray([2.0, 5.0]))
  np.testing.assert_allclose(model.apply(variables, x, jnp.asarray([2.0, 5.0])),
                             reference / jnp.asarray([2.0, 5.0])[:, None, None, None], rtol=1e-6)


def test_config_errors_name_the_field():
  config = config_for('text')
  config.model.vocabulary = ()
  with pytest.raises(ValueError, match='model.vocabulary'):
    models_lib.init_model(jax.random.PRNGKey(0), config, (4, 4, 4))
  config = config_for('words')
  with pytest.raises(ValueError, match='model.conditioning'):
    models_lib.init_model(jax.random.PRNGKey(0), config, (4, 4, 4))
  config = config_for(None)
  config.model.head_dim = 5
  with pytest.raises(ValueError, match='ldm_unet.*does not split'):
    models_lib.init_model(jax.random.PRNGKey(0), config, (4, 4, 4))


def test_an_unset_vocabulary_is_that_of_the_training_captions_and_is_recorded(tmp_path):
  from PIL import Image
  texts = ['a red cube', 'two blue cubes', 'a red ball']
  for i, text in enumerate(texts):
    Image.fromarray(np.full((4, 4, 3), 40 * i, np.uint8)).save(tmp_path / f'{i}.png')
    (tmp_path / f'{i}.txt').write_text(text)
  config = config_for('text')
  config.data.update(dataset='folder', path=str(tmp_path), image_size=4, num_channels=3)
  config.model.vocabulary = None
  workdir = tmp_path / 'run'
  resolved = conditions.resolve_vocabulary(config, str(workdir))
  assert resolved.model.vocabulary == ('a', 'red', 'cube', 'two', 'blue', 'cubes', 'ball')
  assert config.model.vocabulary is None  # the caller's config is left alone
  workdir.mkdir()
  (workdir / 'config.json').write_text(
      '{"model": {"vocabulary": ["recorded", "words"]}}')
  assert conditions.resolve_vocabulary(config, str(workdir)).model.vocabulary == (
      'recorded', 'words')
