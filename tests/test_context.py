"""Cross-attention conditioning: the U-Net's cross-attention against a naive softmax over the
context, the class and text context encoders (a text layer against a numpy re-computation), and
the context dropout rate."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from score_sde import losses
from score_sde.models import context as context_lib
from score_sde.models import ldm_blocks


def softmax_attention(q, k, v, heads):
  """Naive multi-head softmax(q k^T / sqrt(d)) v in float64, q (T, C), k and v (S, C)."""
  d = q.shape[1] // heads
  out = []
  for h in range(heads):
    qh, kh, vh = (a[:, h * d:(h + 1) * d] for a in (q, k, v))
    logits = qh @ kh.T / np.sqrt(d)
    weights = np.exp(logits - logits.max(1, keepdims=True))
    out.append((weights / weights.sum(1, keepdims=True)) @ vh)
  return np.concatenate(out, 1)


def layer_norm(x, scale, bias, eps=1e-6):
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * scale + bias


def test_cross_attention_is_the_softmax_over_the_context():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 12))
  context = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 7))
  layer = ldm_blocks.Attention(num_heads=3)
  params = layer.init(jax.random.PRNGKey(2), x, context)['params']
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  for b in range(2):
    xb, cb = np.asarray(x[b], np.float64), np.asarray(context[b], np.float64)
    heads = softmax_attention(xb @ p['to_q']['kernel'], cb @ p['to_k']['kernel'],
                              cb @ p['to_v']['kernel'], 3)
    expected = heads @ p['to_out_0']['kernel'] + p['to_out_0']['bias']
    np.testing.assert_allclose(layer.apply({'params': params}, x, context)[b], expected,
                               rtol=1e-4, atol=1e-5)


def test_text_layer_matches_a_numpy_recomputation():
  x = jax.random.normal(jax.random.PRNGKey(3), (1, 5, 8))
  layer = context_lib.TextLayer(heads=2)
  params = layer.init(jax.random.PRNGKey(4), x)['params']
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  perturbed = {k: {n: v + 0.1 * np.random.default_rng(5).normal(size=v.shape)
                   for n, v in layer_params.items()} for k, layer_params in p.items()}
  dense = lambda h, name: h @ perturbed[name]['kernel'] + perturbed[name]['bias']  # noqa: E731
  xs = np.asarray(x[0], np.float64)
  h = layer_norm(xs, perturbed['norm_attention']['scale'], perturbed['norm_attention']['bias'])
  h = xs + dense(softmax_attention(dense(h, 'query'), dense(h, 'key'), dense(h, 'value'), 2),
                 'attention_out')
  m = dense(layer_norm(h, perturbed['norm_mlp']['scale'], perturbed['norm_mlp']['bias']), 'mlp_in')
  expected = h + dense(0.5 * m * (1 + special.erf(m / np.sqrt(2))), 'mlp_out')
  ours = layer.apply({'params': jax.tree.map(jnp.asarray, perturbed)}, x)
  np.testing.assert_allclose(ours[0], expected, rtol=1e-4, atol=1e-4)


def test_text_context_reads_the_whole_caption_and_refuses_long_ones():
  encoder = context_lib.TextContext(vocab_size=10, max_length=6, width=16, layers=2, heads=2)
  ids = jnp.array([[3, 4, 5, 0, 0, 0]])
  params = encoder.init(jax.random.PRNGKey(0), ids)
  out = encoder.apply(params, ids)
  assert out.shape == (1, 6, 16)
  later_word = encoder.apply(params, ids.at[0, 2].set(7))
  assert not np.allclose(out[0, 0], later_word[0, 0])  # bidirectional: word 0 sees word 2
  with pytest.raises(ValueError, match='7 word ids exceed max_length = 6'):
    encoder.apply(params, jnp.zeros((1, 7), jnp.int32))


def test_class_context_has_a_null_token():
  encoder = context_lib.ClassContext(num_classes=3, width=4)
  params = encoder.init(jax.random.PRNGKey(0), jnp.array([0]))
  tokens = encoder.apply(params, jnp.arange(4))
  assert tokens.shape == (4, 1, 4)
  np.testing.assert_array_equal(tokens[:, 0], params['params']['class_tokens']['embedding'])


@pytest.mark.parametrize('rate', [0.1, 0.5])
def test_context_dropout_honours_its_rate_and_keeps_the_rest(rate):
  ids = jnp.tile(jnp.arange(1, 6, dtype=jnp.int32), (20_000, 1))
  dropped = losses.drop_labels(jax.random.PRNGKey(1), ids, rate, 0)
  empty = np.all(np.asarray(dropped) == 0, axis=1)
  kept = np.all(np.asarray(dropped) == np.asarray(ids), axis=1)
  assert np.all(empty | kept)
  standard_error = np.sqrt(rate * (1 - rate) / len(ids))
  assert abs(empty.mean() - rate) < 4.5 * standard_error
  labels = losses.drop_labels(jax.random.PRNGKey(2), jnp.arange(8), 0.0, 10)
  np.testing.assert_array_equal(labels, np.arange(8))
