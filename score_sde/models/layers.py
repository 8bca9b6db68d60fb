"""Layers shared by the score networks."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

NONLINEARITIES = {'elu': nn.elu, 'relu': nn.relu, 'lrelu': lambda x: nn.leaky_relu(x, 0.2),
                  'swish': nn.swish}


def get_timestep_embedding(timesteps: jax.Array, embedding_dim: int,
                           max_positions: int = 10000) -> jax.Array:
  """Sinusoidal embedding of (B,) real timesteps into (B, embedding_dim) (Vaswani et al. 2017,
  as used by DDPM): [sin(t w_k), cos(t w_k)] with w_k = max_positions^(-k / (embedding_dim/2 - 1))."""
  half_dim = embedding_dim // 2
  frequencies = jnp.exp(-math.log(max_positions) / (half_dim - 1) * jnp.arange(half_dim))
  angles = timesteps.astype(jnp.float32)[:, None] * frequencies[None, :]
  embedding = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1)
  if embedding_dim % 2 == 1:
    embedding = jnp.pad(embedding, [(0, 0), (0, 1)])
  return embedding


class GaussianFourierProjection(nn.Module):
  """Random Fourier features [sin(2 pi x W), cos(2 pi x W)] of (B,) inputs, W ~ N(0, scale^2)
  drawn at initialisation and never trained (Tancik et al. 2020); output (B, 2 embedding_size)."""

  embedding_size: int = 256
  scale: float = 1.0

  @nn.compact
  def __call__(self, x):
    W = self.param('W', jax.nn.initializers.normal(stddev=self.scale), (self.embedding_size,))
    W = jax.lax.stop_gradient(W)
    angles = x[:, None] * W[None, :] * 2 * jnp.pi
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
