"""The U-Net of DDPM (Ho et al. 2020, App. B) with the options of the official score_sde configs."""
import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from score_sde import config_checks
from score_sde.models import conditioning, layers, normalization, register_model


@register_model(name='ddpm')
class DDPM(nn.Module):
  """DDPM's U-Net: x (B, H, W, C) and labels (B,) -> output (B, H, W, C).

  A 3x3 conv, then len(ch_mult) resolution levels of num_res_blocks ResNet blocks with nf *
  ch_mult[level] channels (self-attention after each block at the heights in attn_resolutions)
  and a 2x downsampling between levels; a middle ResNet-attention-ResNet stage; the mirrored
  upsampling path whose num_res_blocks + 1 blocks per level each take the concatenation with a
  stored activation of the downsampling path; GroupNorm, activation and a 3x3 conv initialised at
  scale ~0. H and W must be divisible by 2^(len(ch_mult) - 1).

  With `conditional`, the labels (step indices, 999 t, or sigma) are embedded sinusoidally into
  nf features and passed through two dense layers of 4 nf units (the act between them) into every
  ResNet block. Inputs in [0, 1] are mapped to [-1, 1] unless `data.centered`. With
  `scale_by_sigma` (VE models only) the output is divided by the noise level sigma of each label
  (Song & Ermon 2020, technique 3). With model.num_classes = n (and `conditional`) the model is
  class-conditional: class_labels int (B,) in 0 .. n (n, and None, the null label) are embedded
  into 4 nf features added to the time embedding (models.conditioning).

  Config fields: model.{nf, ch_mult, num_res_blocks, attn_resolutions, dropout, resamp_with_conv,
  conditional, scale_by_sigma, nonlinearity, normalization, num_classes}, data.centered; with
  scale_by_sigma also training.{sde, continuous} and model.{sigma_min, sigma_max, num_scales}.
  """

  config: ml_collections.ConfigDict
  takes_class_labels = True

  @nn.compact
  def __call__(self, x, labels, train: bool = False, class_labels=None):
    config = self.config
    num_classes = conditioning.num_classes(config)
    nf = config_checks.positive_int(config, 'model.nf')
    ch_mult = config_checks.positive_ints(config, 'model.ch_mult', allow_empty=False)
    num_res_blocks = config_checks.positive_int(config, 'model.num_res_blocks')
    attn_resolutions = config_checks.positive_ints(config, 'model.attn_resolutions', allow_empty=True)
    dropout = config_checks.unit_interval(config, 'model.dropout')
    resamp_with_conv = config_checks.boolean(config, 'model.resamp_with_conv')
    conditional = config_checks.boolean(config, 'model.conditional')
    centered = config_checks.boolean(config, 'data.centered')
    act = layers.get_act(config)
    normalize = normalization.get_normalization(config)
    scale_by_sigma = config_checks.boolean(config, 'model.scale_by_sigma')
    sigmas = layers.label_sigmas(config, labels) if scale_by_sigma else None
    num_levels = len(ch_mult)
    if x.shape[1] % 2**(num_levels - 1) or x.shape[2] % 2**(num_levels - 1):
      raise ValueError(f'DDPM with {num_levels} resolution levels (model.ch_mult = {ch_mult}) '
                       f'needs H and W divisible by {2**(num_levels - 1)}; got {x.shape[1:3]}.')

    if conditional:
      temb = layers.get_timestep_embedding(labels, nf)
      temb = nn.Dense(4 * nf, kernel_init=layers.default_init())(temb)
      temb = nn.Dense(4 * nf, kernel_init=layers.default_init())(act(temb))
    else:
      temb = None
    temb = conditioning.add_class_embedding(temb, class_labels, num_classes)

    def resnet_block(h, out_ch=None):
      block = layers.ResnetBlockDDPM(act=act, normalize=normalize, out_ch=out_ch, dropout=dropout)
      return block(h, temb, train)

    def attention_if_listed(h):
      return layers.AttnBlock(normalize=normalize)(h) if h.shape[1] in attn_resolutions else h

    skips = [layers.ddpm_conv3x3(x if centered else 2.0 * x - 1.0, nf)]
    for level, mult in enumerate(ch_mult):
      for _ in range(num_res_blocks):
        skips.append(attention_if_listed(resnet_block(skips[-1], nf * mult)))
      if level < num_levels - 1:
        skips.append(layers.Downsample(with_conv=resamp_with_conv)(skips[-1]))

    h = resnet_block(skips[-1])
    h = layers.AttnBlock(normalize=normalize)(h)
    h = resnet_block(h)

    for level in reversed(range(num_levels)):
      for _ in range(num_res_blocks + 1):
        h = resnet_block(jnp.concatenate([h, skips.pop()], axis=-1), nf * ch_mult[level])
      h = attention_if_listed(h)
      if level > 0:
        h = layers.Upsample(with_conv=resamp_with_conv)(h)

    h = layers.ddpm_conv3x3(act(normalize()(h)), x.shape[-1], init_scale=0.0)
    if sigmas is not None:
      h = h / sigmas.reshape((-1,) + (1,) * (x.ndim - 1))
    return h
