"""RefineNet score networks of NCSN (Song & Ermon 2019) and NCSNv2 (Song & Ermon 2020).

A dilated pre-activation ResNet encoder is followed by a RefineNet decoder that fuses the encoder
levels from the deepest up. NCSN v1 (`ncsn`) conditions every normalisation on the noise level
(ConditionalInstanceNorm++, one embedding row per noise level, config.model.num_classes =
config.model.num_scales). NCSNv2 (`ncsnv2_64`, `ncsnv2_128`, `ncsnv2_256`, by image size) is
unconditional and instead divides its output by the noise level sigma_i (NCSNv2, technique 3).

Labels are integer noise-level indices i into `layers.get_sigmas(config)` (descending sigmas), as
for discrete VE training. Inputs in [0, 1] are mapped to [-1, 1] unless config.data.centered.
"""
import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from score_sde import config_checks
from score_sde.models import layers, normalization, refinenet, register_model


class _RefineNetScoreModel(nn.Module):
  """The shared forward pass, x (B, H, W, C) in [0, 1] and labels (B,) int -> (B, H, W, C).

  Subclasses fix the layout: `levels` lists the encoder levels as (channels / nf, dilation); each
  level is two residual blocks, the first of which is a 'down' block at every level but the first
  (halving H and W unless dilated). `refine_multipliers` gives the RefineBlock widths / nf, from
  the deepest level up. `conditional` selects the noise-conditional blocks of NCSN v1.

  Config fields: model.nf, model.nonlinearity, model.normalization, model.interpolation
  ('bilinear' | 'nearest_neighbor'), model.scale_by_sigma (then model.sigma_min, sigma_max,
  num_scales), data.centered; NCSN v1 also model.num_classes. `train` changes nothing: these
  networks have no dropout.
  """

  config: ml_collections.ConfigDict

  levels = ()
  refine_multipliers = ()
  conditional = False

  @nn.compact
  def __call__(self, x, labels, train: bool = False):
    config = self.config
    nf = config_checks.positive_int(config, 'model.nf')
    act = layers.get_act(config)
    norm = normalization.get_normalization(config, conditional=self.conditional)
    interpolation = config_checks.choice(config, 'model.interpolation',
                                         refinenet.RESIZE_METHODS)
    scale_by_sigma = config_checks.boolean(config, 'model.scale_by_sigma')
    centered = config_checks.boolean(config, 'data.centered')
    if self.conditional:
      num_scales = config_checks.positive_int(config, 'model.num_scales')
      if config.model.num_classes != num_scales:
        raise ValueError(f'Config field model.num_classes = {config.model.num_classes} must equal '
                         f'model.num_scales = {num_scales}: one embedding row per noise level.')
    if (self.conditional or scale_by_sigma) and not jnp.issubdtype(labels.dtype, jnp.integer):
      raise ValueError(f'{type(self).__name__} takes integer noise-level indices as labels '
                       f'(discrete VE training, training.continuous = False); got labels of '
                       f'dtype {labels.dtype}.')

    def residual_block(h, features, resample, dilation):
      if self.conditional:
        return refinenet.ConditionalResidualBlock(features, norm, resample, act,
                                                  dilation)(h, labels)
      return refinenet.ResidualBlock(features, norm, resample, act, dilation)(h)

    def refine_block(hs, features, start, end):
      shape = hs[0].shape[1:3]
      if self.conditional:
        return refinenet.CondRefineBlock(shape, features, norm, act, interpolation, start,
                                         end)(hs, labels)
      return refinenet.RefineBlock(shape, features, act, interpolation, start, end)(hs)

    h = x if centered else 2 * x - 1.0
    h = refinenet.ncsn_conv3x3(h, nf)
    skips = []
    for i, (multiplier, dilation) in enumerate(self.levels):
      h = residual_block(h, multiplier * nf, 'down' if i > 0 else None, dilation)
      h = residual_block(h, multiplier * nf, None, dilation)
      skips.append(h)

    h = None
    depth = len(self.refine_multipliers)
    for j, (skip, multiplier) in enumerate(zip(skips[::-1], self.refine_multipliers)):
      h = refine_block([skip] if h is None else [skip, h], multiplier * nf, start=j == 0,
                       end=j == depth - 1)

    h = norm()(h, labels) if self.conditional else norm()(h)
    h = refinenet.ncsn_conv3x3(act(h), x.shape[-1])
    if scale_by_sigma:
      h = h / layers.label_sigmas(config, labels).reshape((-1,) + (1,) * (x.ndim - 1))
    return h


@register_model(name='ncsn')
class NCSN(_RefineNetScoreModel):
  """NCSN v1 (Song & Ermon 2019): the noise-conditional dilated RefineNet (CondRefineNetDilated)
  with ConditionalInstanceNorm++, for 32 px and 64 px images (one halving of the resolution)."""

  levels = ((1, 1), (2, 1), (2, 2), (2, 4))
  refine_multipliers = (2, 2, 2, 1)
  conditional = True


@register_model(name='ncsnv2_64')
class NCSNv2(_RefineNetScoreModel):
  """NCSNv2 for images below 96 px (CIFAR-10, CelebA 64): one halving of the resolution, widths
  nf, 2nf, 2nf (dilation 2), 2nf (dilation 4)."""

  levels = ((1, 1), (2, 1), (2, 2), (2, 4))
  refine_multipliers = (2, 2, 2, 1)


@register_model(name='ncsnv2_128')
class NCSNv2_128(_RefineNetScoreModel):
  """NCSNv2 for 96-128 px images (LSUN bedroom/tower 128): two halvings, widths nf, 2nf, 2nf,
  4nf (dilation 2), 4nf (dilation 4)."""

  levels = ((1, 1), (2, 1), (2, 1), (4, 2), (4, 4))
  refine_multipliers = (4, 2, 2, 1, 1)


@register_model(name='ncsnv2_256')
class NCSNv2_256(_RefineNetScoreModel):
  """NCSNv2 for 129-256 px images (FFHQ/church 256): three halvings, widths nf, 2nf, 2nf, 2nf,
  4nf (dilation 2), 4nf (dilation 4)."""

  levels = ((1, 1), (2, 1), (2, 1), (2, 1), (4, 2), (4, 4))
  refine_multipliers = (4, 2, 2, 2, 1, 1)
