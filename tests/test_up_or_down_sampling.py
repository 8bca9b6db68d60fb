"""FIR resampling (StyleGAN2's upfirdn2d) against a direct numpy upfirdn written as plain loops."""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde.models import up_or_down_sampling as uds

RNG = np.random.default_rng(0)
KERNELS = [(1, 3, 3, 1), (1, 1), (1, 2, 1), (1,), (2, 1, 1, 3, 3, 1),
           RNG.uniform(0.1, 1.0, size=(3, 3))]
SIZES = [(8, 8), (5, 7), (6, 9)]


def np_kernel(k, gain):
  k = np.asarray(k, np.float64)
  k = np.outer(k, k) if k.ndim == 1 else k
  return k / k.sum() * gain


def np_upfirdn(x, k, up=1, down=1, pad0=0, pad1=0):
  """x (B, H, W, C): insert up - 1 zeros after each pixel, pad (negative: crop), convolve with
  the flipped-kernel sum of a true 2-D convolution over the valid part, keep every down-th."""
  b, h, w, c = x.shape
  v = np.zeros((b, h * up, w * up, c))
  for i in range(h):
    for j in range(w):
      v[:, i * up, j * up] = x[:, i, j]
  v = np.pad(v, ((0, 0), (max(pad0, 0), max(pad1, 0)), (max(pad0, 0), max(pad1, 0)), (0, 0)))
  v = v[:, max(-pad0, 0):v.shape[1] - max(-pad1, 0), max(-pad0, 0):v.shape[2] - max(-pad1, 0)]
  kh, kw = k.shape
  out = np.zeros((b, v.shape[1] - kh + 1, v.shape[2] - kw + 1, c))
  for i in range(out.shape[1]):
    for j in range(out.shape[2]):
      for a in range(kh):
        for e in range(kw):  # convolution: output (i, j) meets k[kh-1-a, kw-1-e] at v[i+a, j+e]
          out[:, i, j] += k[kh - 1 - a, kw - 1 - e] * v[:, i + a, j + e]
  return out[:, ::down, ::down]


def np_correlate(x, w, stride=1):
  """Valid cross-correlation (the convention of lax/flax convolutions), x (B, H, W, I), w (k, k,
  I, O)."""
  kh = w.shape[0]
  rows = (x.shape[1] - kh) // stride + 1
  cols = (x.shape[2] - kh) // stride + 1
  out = np.zeros((x.shape[0], rows, cols, w.shape[3]))
  for i in range(rows):
    for j in range(cols):
      patch = x[:, i * stride:i * stride + kh, j * stride:j * stride + kh]
      out[:, i, j] = np.einsum('bhwi,hwio->bo', patch, w)
  return out


def np_upsample(x, k, factor, gain):
  kernel = np_kernel(k, gain * factor**2)
  p = kernel.shape[0] - factor
  return np_upfirdn(x, kernel, up=factor, pad0=(p + 1) // 2 + factor - 1, pad1=p // 2)


def np_downsample(x, k, factor, gain):
  kernel = np_kernel(k, gain)
  p = kernel.shape[0] - factor
  return np_upfirdn(x, kernel, down=factor, pad0=(p + 1) // 2, pad1=p // 2)


def np_upsample_conv(x, w, k, factor, gain):
  """Transposed convolution (zero insertion, full correlation with w), then the FIR filter."""
  b, h, wd, c = x.shape
  u = np.zeros((b, (h - 1) * factor + 1, (wd - 1) * factor + 1, c))
  u[:, ::factor, ::factor] = x
  kw = w.shape[0]
  y = np_correlate(np.pad(u, ((0, 0), (kw - 1, kw - 1), (kw - 1, kw - 1), (0, 0))), w)
  kernel = np_kernel(k, gain * factor**2)
  p = kernel.shape[0] - factor - (kw - 1)
  return np_upfirdn(y, kernel, pad0=(p + 1) // 2 + factor - 1, pad1=p // 2 + 1)


def np_conv_downsample(x, w, k, factor, gain):
  kernel = np_kernel(k, gain)
  p = kernel.shape[0] - factor + w.shape[0] - 1
  return np_correlate(np_upfirdn(x, kernel, pad0=(p + 1) // 2, pad1=p // 2), w, stride=factor)


def data(h, w, c=2):
  return RNG.standard_normal((2, h, w, c)).astype(np.float32)


def assert_close(ours, expected):
  assert ours.shape == expected.shape
  np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize('up,down,pad', [(1, 1, (0, 0)), (2, 1, (1, 2)), (1, 2, (2, 1)),
                                         (3, 2, (0, 3)), (2, 3, (-1, 2)), (1, 1, (-1, -1))])
def test_upfirdn_matches_numpy(up, down, pad):
  k = RNG.standard_normal((3, 4))
  x = data(7, 6)
  assert_close(uds.upfirdn_2d(x, k, up, down, pad), np_upfirdn(x, k, up, down, *pad))


# Every kernel, both factors, both gains and every size, in 12 cases.
CASES = [(k, factor, gain, SIZES[i % 3]) for i, (k, (factor, gain)) in enumerate(itertools.product(
    range(len(KERNELS)), [(2, 1.0), (3, 2.5)]))]


@pytest.mark.parametrize('k,factor,gain,size', CASES)
def test_fir_resampling_matches_numpy(k, factor, gain, size):
  k = KERNELS[k]
  x = data(*size)
  w = RNG.standard_normal((3, 3, 2, 3)).astype(np.float32)
  ops = [(uds.upsample_2d, np_upsample, (x,)), (uds.downsample_2d, np_downsample, (x,)),
         (uds.upsample_conv_2d, np_upsample_conv, (x, w)),
         (uds.conv_downsample_2d, np_conv_downsample, (x, w))]
  for ours, reference, args in ops:
    fn = jax.jit(functools.partial(ours, k=k, factor=factor, gain=gain))
    assert_close(fn(*args), reference(*args, k, factor, gain))


def test_resampling_shapes_and_special_kernels():
  x = data(6, 8)
  assert uds.upsample_2d(x).shape == (2, 12, 16, 2)
  assert uds.downsample_2d(x).shape == (2, 3, 4, 2)
  # [1, 1] is nearest-neighbour up-sampling and 2x2 average pooling; gain scales.
  np.testing.assert_allclose(uds.upsample_2d(x, (1, 1)), x.repeat(2, 1).repeat(2, 2), atol=1e-6)
  box = x.reshape(2, 3, 2, 4, 2, 2).mean(axis=(2, 4))
  np.testing.assert_allclose(uds.downsample_2d(x, (1, 1), gain=3.0), 3 * box, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(uds.nearest_upsample_2d(x), x.repeat(2, 1).repeat(2, 2))
  np.testing.assert_allclose(uds.box_downsample_2d(x), box, rtol=1e-6, atol=1e-6)
  # A constant image stays constant (times gain) away from the zero-padded border.
  ones = np.ones((1, 8, 8, 1), np.float32)
  np.testing.assert_allclose(uds.upsample_2d(ones, gain=2.0)[0, 2:-2, 2:-2], 2.0, rtol=1e-6)
  np.testing.assert_allclose(uds.downsample_2d(ones)[0, 1:-1, 1:-1], 1.0, rtol=1e-6)


def test_fused_convolutions_equal_resample_then_conv_inside():
  """Away from the border the fused ops are "FIR up-sample, then a SAME conv" and "SAME conv,
  then FIR down-sample" (their only difference is where the zero padding enters)."""
  x = data(6, 6)
  w = RNG.standard_normal((3, 3, 2, 3)).astype(np.float32)

  def conv(v):
    return jax.lax.conv_general_dilated(v, w, (1, 1), 'SAME',
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  np.testing.assert_allclose(uds.upsample_conv_2d(x, w)[:, 1:-1, 1:-1],
                             conv(uds.upsample_2d(x))[:, 1:-1, 1:-1], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(uds.conv_downsample_2d(x, w)[:, 1:-1, 1:-1],
                             uds.downsample_2d(conv(x))[:, 1:-1, 1:-1], rtol=1e-5, atol=1e-5)


def test_fir_kernel_2d():
  np.testing.assert_allclose(uds.fir_kernel_2d((1, 3, 3, 1), gain=4.0),
                             np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 16.0)
  with pytest.raises(ValueError, match='non-zero sum'):
    uds.fir_kernel_2d((1, -1))


@pytest.mark.parametrize('up,down', [(False, False), (True, False), (False, True)])
def test_conv2d_module(up, down):
  x = data(8, 8, c=4)
  layer = uds.Conv2d(6, 3, up=up, down=down, resample_kernel=(1, 3, 3, 1))
  variables = layer.init(jax.random.PRNGKey(0), x)
  params = variables['params']
  assert list(params) == ['weight', 'bias']
  assert params['weight'].shape == (3, 3, 4, 6) and params['bias'].shape == (6,)
  np.testing.assert_array_equal(params['bias'], 0.0)
  # DDPM init: uniform with variance 1 / fan_avg, fan_avg = 9 (4 + 6) / 2 = 45.
  limit = np.sqrt(3.0 / 45)
  assert np.abs(params['weight']).max() <= limit
  params = {'weight': params['weight'], 'bias': jnp.arange(6.0)}
  w = np.asarray(params['weight'], np.float64)
  if up:
    expected = np_upsample_conv(x, w, (1, 3, 3, 1), 2, 1.0)
  elif down:
    expected = np_conv_downsample(x, w, (1, 3, 3, 1), 2, 1.0)
  else:
    expected = np_correlate(np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), w)
  assert_close(layer.apply({'params': params}, x), expected + np.arange(6.0))
  with pytest.raises(ValueError, match='both'):
    uds.Conv2d(6, 3, up=True, down=True).init(jax.random.PRNGKey(0), x)


def test_gradients_match_numpy_adjoint():
  """The resampling ops are linear: <up(x), g> = <x, up^T(g)>, so the VJP of the sum of
  up(x) * g is the numpy up-sampling's transpose applied to g, checked via a dense matrix."""
  x = data(4, 5, c=1)[:1]
  g = RNG.standard_normal((1, 8, 10, 1))
  grad = jax.grad(lambda v: jnp.sum(uds.upsample_2d(v) * g))(x)
  basis = np.eye(x.size).reshape(x.size, *x.shape[1:])[:, None]
  matrix = np.stack([np_upsample(e, (1, 3, 3, 1), 2, 1.0).ravel() for e in basis])
  np.testing.assert_allclose(np.asarray(grad).ravel(), matrix @ g.ravel(), rtol=1e-5, atol=1e-5)
