"""Classifier-free guidance (Ho & Salimans 2021): the score of a class-conditional model mixed
with its unconditional score (the null label) at guidance scale w,

  s_w(x, t | y) = (1 - w) s(x, t | null) + w s(x, t | y),

written so that w = 0 is exactly the unconditional and w = 1 exactly the conditional score
(w > 1 sharpens towards the class). The result is a plain score_fn(x, t), so it works with every
sampler and with the likelihood; the score function of a velocity model (score_sde.flows) comes
back one whose velocity is guided alike (the velocity is affine in the score).
"""
import jax.numpy as jnp

from score_sde import flows


def combine(conditional, unconditional, guidance_scale):
  """(1 - w) unconditional + w conditional at guidance scale w: exactly the unconditional
  prediction at w = 0 and exactly the conditional one at w = 1 (for scores, or the epsilon
  predictions they are proportional to)."""
  return (1.0 - guidance_scale) * unconditional + guidance_scale * conditional


def guided_score_fn(class_score_fn, class_labels, guidance_scale, null_label):
  """score_fn(x, t) guided towards the conditions `class_labels`: one condition, or one per
  sample (B, ...).

  class_score_fn(x, t, class_labels=...) is a conditional score (x (B, ...), t (B,), conditions
  (B, ...)); `null_label` is the condition it was trained with for "no condition": an int label
  (class-conditional models), or an array, e.g. the word ids of the empty caption, whose shape
  is that of one condition. guidance_scale None means no guidance: the conditional score alone
  (one evaluation instead of two). The ODE sampler and the likelihood call the score one sample
  at a time: with them, pass one condition.
  """
  null = jnp.asarray(null_label)
  class_labels = jnp.asarray(class_labels, null.dtype)
  if class_labels.shape not in (null.shape, class_labels.shape[:1] + null.shape):
    raise ValueError(f'class_labels of shape {class_labels.shape} must be one condition of shape '
                     f'{null.shape} or one per sample (B, ...) of it.')

  def labels_for(x):
    if class_labels.ndim > null.ndim and class_labels.shape[0] != x.shape[0]:
      raise ValueError(f'{class_labels.shape[0]} conditions for a batch of {x.shape[0]}: the '
                       'ODE sampler and the likelihood see one sample at a time; pass one.')
    return jnp.broadcast_to(class_labels, (x.shape[0], *null.shape))

  def guide(fn):
    if guidance_scale is None:
      return lambda x, t: fn(x, t, class_labels=labels_for(x))

    def guided(x, t):
      labels = labels_for(x)
      both = fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                class_labels=jnp.concatenate([labels, jnp.broadcast_to(null, labels.shape)]))
      return combine(both[:x.shape[0]], both[x.shape[0]:], guidance_scale)

    return guided

  return flows.transformed(class_score_fn, guide)
