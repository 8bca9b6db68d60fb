"""The CLIP text transformer (Radford et al. 2021), the text encoder of Stable Diffusion, with the
parameter names of transformers' CLIPTextModel (without its `text_model.` prefix).

  token ids int (B, L) -> last hidden state (B, L, hidden_size) and the hidden states of every
  layer (embeddings first).

Token plus position embeddings, then `num_layers` pre-LayerNorm blocks of causal multi-head
self-attention (position i sees positions <= i) and an MLP (fc1, quick_gelu or gelu, fc2), each
added back to its input, and a final LayerNorm on the last block's output. Stable Diffusion 1.x
conditions on the last hidden state of CLIP ViT-L/14 (12 layers); SD 2.x on OpenCLIP ViT-H/14's
penultimate layer followed by the final LayerNorm, which is the last hidden state of the first 23
of its 24 layers (the text encoder diffusers ships for SD 2.x).
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_sde.models import attention


def quick_gelu(x):
  """x sigmoid(1.702 x), the GELU approximation of OpenAI's CLIP."""
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {'quick_gelu': quick_gelu, 'gelu': lambda x: nn.gelu(x, approximate=False)}


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
  """Every size of the text transformer. Defaults: CLIP ViT-L/14's, the encoder of SD 1.x."""

  vocab_size: int = 49408
  hidden_size: int = 768
  intermediate_size: int = 3072
  num_layers: int = 12
  num_heads: int = 12
  max_positions: int = 77
  activation: str = 'quick_gelu'
  layer_norm_eps: float = 1e-5

  def __post_init__(self):
    if self.activation not in ACTIVATIONS:
      raise ValueError(f'activation = {self.activation!r} is not supported; allowed: '
                       f'{sorted(ACTIVATIONS)}.')
    if self.hidden_size % self.num_heads:
      raise ValueError(f'hidden_size = {self.hidden_size} does not split into num_heads = '
                       f'{self.num_heads} heads.')


def _layer_norm(config: CLIPTextConfig, dtype, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=dtype, use_fast_variance=False,
                      name=name)


class Embeddings(nn.Module):
  """ids (B, L) -> token_embedding(ids) + position_embedding(0 .. L - 1), (B, L, hidden_size)."""

  config: CLIPTextConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids):
    c = self.config
    tokens = nn.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype, name='token_embedding')(ids)
    positions = nn.Embed(c.max_positions, c.hidden_size, dtype=self.dtype,
                         name='position_embedding')(jnp.arange(ids.shape[1]))
    return tokens + positions[None]


class SelfAttention(nn.Module):
  """Causal multi-head self-attention with q_proj, k_proj, v_proj, out_proj (all with biases)."""

  config: CLIPTextConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    dense = lambda name: nn.Dense(x.shape[-1], dtype=self.dtype, name=name)  # noqa: E731
    out = attention.multi_head_attention(dense('q_proj')(x), dense('k_proj')(x),
                                         dense('v_proj')(x), self.config.num_heads,
                                         is_causal=True)
    return dense('out_proj')(out)


class EncoderLayer(nn.Module):
  """x + attention(layer_norm1(x)), then h + mlp(layer_norm2(h))."""

  config: CLIPTextConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = self.config
    x = x + SelfAttention(c, dtype=self.dtype, name='self_attn')(
        _layer_norm(c, self.dtype, 'layer_norm1')(x))
    h = _layer_norm(c, self.dtype, 'layer_norm2')(x)
    h = MLP(c, dtype=self.dtype, name='mlp')(h)
    return x + h


class MLP(nn.Module):
  """fc2(act(fc1(x))) with intermediate_size hidden units."""

  config: CLIPTextConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = self.config
    h = nn.Dense(c.intermediate_size, dtype=self.dtype, name='fc1')(x)
    return nn.Dense(c.hidden_size, dtype=self.dtype, name='fc2')(ACTIVATIONS[c.activation](h))


class Encoder(nn.Module):
  """The stack of layers; returns the input and every layer's output (num_layers + 1 arrays)."""

  config: CLIPTextConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    states = [x]
    for i in range(self.config.num_layers):
      states.append(EncoderLayer(self.config, dtype=self.dtype, name=f'layers_{i}')(states[-1]))
    return states


class CLIPTextTransformer(nn.Module):
  """ids int (B, L), L <= max_positions -> (last_hidden_state (B, L, D), hidden_states): the
  final LayerNorm of the last layer's output, and the tuple of the embeddings and each layer's
  output (before any final LayerNorm; hidden_states[-2] is the penultimate layer's)."""

  config: CLIPTextConfig = CLIPTextConfig()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids):
    c = self.config
    if ids.ndim != 2 or ids.shape[1] > c.max_positions:
      raise ValueError(f'token ids must have shape (B, L) with L <= {c.max_positions}; got '
                       f'{ids.shape}.')
    states = Encoder(c, dtype=self.dtype, name='encoder')(
        Embeddings(c, dtype=self.dtype, name='embeddings')(ids))
    last = _layer_norm(c, self.dtype, 'final_layer_norm')(states[-1])
    return last, tuple(states)
