"""Layers of the latent-diffusion networks against independent formulas: attention (both of its
CPU paths) against jax.nn.dot_product_attention, the timestep features against their definition
(diffusers' get_timestep_embedding), GEGLU's halves, the convolution (both of its CPU paths)
against numpy's sum over kernel taps, the autoencoder's asymmetric padding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde.models import attention, ldm_blocks, unet_ldm


@pytest.mark.parametrize('blocked', [False, True], ids=['whole', 'blocked'])
@pytest.mark.parametrize('is_causal', [False, True])
def test_attention_equals_jax_dot_product_attention(monkeypatch, blocked, is_causal):
  if blocked:  # 96 queries in blocks of 24: four blocks per head, the causal mask offset by each
    monkeypatch.setattr(attention, '_CPU_BLOCK_LOGITS', 96 * 24)
  batch, length, heads, head_dim = 2, 96, 3, 8
  q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (batch, length, heads * head_dim))
             for i in range(3))
  ours = attention.multi_head_attention(q, k, v, heads, is_causal=is_causal)

  def split(a):
    return a.reshape(batch, length, heads, head_dim)

  reference = jax.nn.dot_product_attention(split(q), split(k), split(v), is_causal=is_causal,
                                           implementation='xla')
  np.testing.assert_allclose(ours, reference.reshape(ours.shape), atol=2e-6)
  if blocked:
    assert attention._query_block(length, length) == 24


def test_timestep_features_follow_their_definition():
  t = np.array([0.0, 3.0, 999.0])
  dim, shift = 8, 1.0
  frequencies = np.exp(-np.log(10000.0) * np.arange(4) / (4 - shift))
  angles = t[:, None] * frequencies
  np.testing.assert_allclose(unet_ldm.timestep_features(t, dim, False, shift),
                             np.concatenate([np.sin(angles), np.cos(angles)], 1), atol=2e-5)
  frequencies = np.exp(-np.log(10000.0) * np.arange(4) / 4)
  angles = t[:, None] * frequencies
  np.testing.assert_allclose(unet_ldm.timestep_features(t, dim, True, 0.0),
                             np.concatenate([np.cos(angles), np.sin(angles)], 1), atol=2e-5)


def test_geglu_gates_the_first_half_with_the_gelu_of_the_second():
  layer = unet_ldm.GEGLU(3)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 5))
  params = layer.init(jax.random.PRNGKey(1), x)
  projected = x @ params['params']['proj']['kernel'] + params['params']['proj']['bias']
  a, b = projected[:, :3], projected[:, 3:]
  gelu = 0.5 * b * (1 + jax.scipy.special.erf(b / np.sqrt(2.0)))
  np.testing.assert_allclose(layer.apply(params, x), a * gelu, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('size, channels, padding', [
    (4, 40, None),  # 16 positions < 40 / 2 channels: one matmul of the patches
    (5, 12, ((0, 1), (2, 0))),  # 25 positions: XLA's convolution
    (3, 24, ((0, 1), (2, 0))),  # patches, padded unevenly
])
def test_conv_equals_the_sum_over_kernel_taps(size, channels, padding):
  layer = ldm_blocks.conv(7, 3, jnp.float32, 'conv', padding=padding)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, size, size, channels))
  params = layer.init(jax.random.PRNGKey(1), x)
  kernel, bias = (np.asarray(params['params'][k], np.float64) for k in ('kernel', 'bias'))
  (top, bottom), (left, right) = padding or ((1, 1), (1, 1))
  padded = np.pad(np.asarray(x, np.float64), ((0, 0), (top, bottom), (left, right), (0, 0)))
  rows, cols = padded.shape[1] - 2, padded.shape[2] - 2
  expected = bias + sum(padded[:, i:i + rows, j:j + cols] @ kernel[i, j]
                        for i in range(3) for j in range(3))
  np.testing.assert_allclose(layer.apply(params, x), expected, rtol=1e-5, atol=1e-5)


def test_encoder_downsampling_pads_only_bottom_and_right():
  # A stride-2 3x3 conv padded (0, 1) sees rows 0-2 for output row 0 (the U-Net's (1, 1) padding
  # would see a zero row and rows 0-1): with a kernel that reads the top-left tap only, output
  # (i, j) is input (2i, 2j).
  down = ldm_blocks.Downsample(1, asymmetric=True)
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  kernel = jnp.zeros((3, 3, 1, 1)).at[0, 0].set(1.0)
  out = down.apply({'params': {'conv': {'kernel': kernel, 'bias': jnp.zeros(1)}}}, x)
  np.testing.assert_array_equal(out[0, ..., 0], x[0, ::2, ::2, 0])
