"""Controllable generation (paper, Sec. 5 and App. I): inpainting, colorization and
class-conditional sampling with an unconditionally trained score.

Inpainting and colorization use the replacement method with any sampler whose `sample` takes a
`project(keys, x, t)` hook: PC (sampling.get_pc_sampler), DDIM (get_ddim_sampler) and diffusers'
DDIM (get_ddim_diffusers_sampler). After every update of the state (PC: every predictor and
corrector update; DDIM: every step), the known part of the state is replaced by a fresh draw of
the known data perturbed to the state's time, x_known(t) = m(t) y + s(t) z. The unknown part is
returned from the final noise-free denoising step (the official code returns its noisy value
there; diffusers' DDIM has no such step), and the known part is returned exactly equal to the
data. Colorization is inpainting in an orthonormal colour basis whose first axis is the grey
level (R + G + B) / sqrt(3).

Replacement is exact only with a corrector: the score sees the known part's noisy draw, not the
data. On the tests' Gaussian-mixture oracle, PC with its Langevin corrector reaches the exact
conditional's sampling floor; PC without it and DDIM with eta = 1 are close (sliced W1 about 3x
the floor); deterministic DDIM (eta = 0) is further off (about 10x).

All data here is in the model's space (after the data scaler); x (B, ...), t (B,).
"""
import jax
import jax.numpy as jnp
import numpy as np

from score_sde.sampling import streams
from score_sde.sde import expand_to


def _colour_basis() -> np.ndarray:
  """Orthonormal Q (3, 3) whose first column is (1, 1, 1) / sqrt(3): y = x Q maps RGB to
  (grey * sqrt(3), two chroma axes)."""
  q, _ = np.linalg.qr(np.array([[1.0, 1.0, 0.0], [1.0, -1.0, 1.0], [1.0, 0.0, -1.0]]))
  return (q * np.sign(q[0, 0])).astype(np.float32)


COLOUR_BASIS = _colour_basis()


def _replacement_sampler(sde, sampler, known, mask, to_basis, from_basis, kernel=None):
  """Sampling of x whose coordinates with mask == 1 in the basis `to_basis(x)` equal `known`.
  Returns run(key, score_fn, first_index) -> (x, nfe)."""

  def project(keys, x, t):
    if kernel is None:
      mean, std = sde.marginal_prob(known, t)
    else:
      scale, std = kernel(t)
      mean = expand_to(scale, known) * known
    noisy_known = mean + expand_to(std, known) * streams.normal_like(keys, known)
    y = to_basis(x)
    return from_basis(y * (1.0 - mask) + noisy_known * mask)

  def run(key, score_fn, first_index=0):
    x, nfe = sampler(key, score_fn, known.shape, first_index, project=project)
    y = to_basis(x)
    return from_basis(y * (1.0 - mask) + known * mask), nfe

  return run


def inpaint(key, score_fn, sde, sampler, data, mask, first_index=0, kernel=None):
  """Fills the coordinates of `data` (B, ...) where `mask` (broadcastable, 1 = known, 0 = unknown)
  is 0. `sampler` comes from sampling.get_pc_sampler, get_ddim_sampler or
  get_ddim_diffusers_sampler (a sample function with a `project` hook). `kernel(t)` -> (mean
  scale, std), each (B,), of the noise level the sampler's state stands at at time t (B,); None:
  sde.marginal_prob's continuous kernel (a sampler on a discrete model's steps stands at that
  step's alphabar instead). Returns (x, nfe); x equals data where mask is 1."""
  mask = jnp.broadcast_to(jnp.asarray(mask, data.dtype), data.shape)
  identity = lambda x: x  # noqa: E731
  run = _replacement_sampler(sde, sampler, data * mask, mask, identity, identity, kernel)
  return run(key, score_fn, first_index)


def colorize(key, score_fn, sde, sampler, grey, first_index=0):
  """Colour images (B, H, W, 3) whose channel mean equals `grey` (B, H, W, 1), with a sampler as
  in `inpaint`. Returns (x, nfe)."""
  basis = jnp.asarray(COLOUR_BASIS)
  known = jnp.concatenate([grey * np.sqrt(3.0), jnp.zeros_like(grey), jnp.zeros_like(grey)], -1)
  mask = jnp.broadcast_to(jnp.array([1.0, 0.0, 0.0]), known.shape)
  run = _replacement_sampler(sde, sampler, known, mask, lambda x: x @ basis,
                             lambda y: y @ basis.T)
  return run(key, score_fn, first_index)


def conditional_score_fn(score_fn, logit_fn, labels, guidance_scale: float = 1.0):
  """Score of p_t(x | y) up to the guidance scale w (paper, Eq. 14 and App. I.1):

    s(x, t) + w grad_x log softmax(logit_fn(x, t))[y],

  with `logit_fn(x, t) -> (B, num_classes)` a noise-conditional classifier. `labels` is one int
  class for every sample, or an int array (B,) with one class per sample. w = 1 samples
  p_t(x | y) exactly when score and classifier are exact; w = 0 ignores the classifier.

  The ODE sampler and the likelihood solve each sample alone (they call the score with a batch
  of one), so with them use a single int class; an array of labels whose length differs from
  the batch is refused.
  """
  labels = jnp.asarray(labels, jnp.int32)
  if labels.ndim > 1:
    raise ValueError(f'labels must be an int or an array (B,); got shape {labels.shape}.')

  def log_prob_of_labels(x, t):
    if labels.ndim == 1 and labels.shape[0] != x.shape[0]:
      raise ValueError(f'{labels.shape[0]} labels for a batch of {x.shape[0]}: the ODE sampler '
                       'and the likelihood see one sample at a time; pass a single int class.')
    log_probs = jax.nn.log_softmax(logit_fn(x, t), axis=-1)
    batch_labels = jnp.broadcast_to(labels, (x.shape[0],))
    return jnp.sum(jnp.take_along_axis(log_probs, batch_labels[:, None], axis=-1))

  def conditional(x, t):
    return score_fn(x, t) + guidance_scale * jax.grad(log_prob_of_labels)(x, t)

  return conditional
