"""NCSN++ and DDPM++ (Song et al. 2021, "Score-based generative modeling through stochastic
differential equations", App. H): a U-Net of residual blocks with self-attention, optional
progressive input/output image pyramids and FIR resampling. DDPM++ is the same model with
`fir=False`, no pyramids and the positional embedding.
"""
from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from score_sde import config_checks
from score_sde.models import conditioning, layers, layerspp, normalization, register_model

PROGRESSIVE = ('none', 'output_skip', 'residual')
PROGRESSIVE_INPUT = ('none', 'input_skip', 'residual')
RESBLOCK_TYPES = ('ddpm', 'biggan')
EMBEDDING_TYPES = ('fourier', 'positional')


def _fir_kernel(config) -> tuple:
  value = config_checks.get(config, 'model.fir_kernel')
  if (not isinstance(value, (tuple, list)) or not value or
      not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) or
      sum(value) == 0):
    raise ValueError(f'Config field model.fir_kernel = {value!r} must be a non-empty sequence of '
                     'numbers with a non-zero sum (the 1-D taps of a separable FIR filter).')
  return tuple(value)


class Options(NamedTuple):
  """The validated model options of an NCSN++ config (see NCSNpp)."""

  nf: int
  ch_mult: tuple
  num_res_blocks: int
  attn_resolutions: tuple
  dropout: float
  resamp_with_conv: bool
  conditional: bool
  fir: bool
  fir_kernel: tuple
  skip_rescale: bool
  resblock_type: str
  progressive: str
  progressive_input: str
  progressive_combine: str
  embedding_type: str
  fourier_scale: float
  init_scale: float
  scale_by_sigma: bool
  centered: bool

  @classmethod
  def from_config(cls, config) -> 'Options':
    """Reads and checks every field; ValueError naming the field, its value and what is allowed."""
    norm = normalization.get_normalization(config)
    if norm is not nn.GroupNorm:
      raise ValueError(f'Config field model.normalization = {config.model.normalization!r} is '
                       "not supported by NCSN++, whose blocks use GroupNorm; allowed: "
                       "['GroupNorm'].")
    conv_size = config.model.get('conv_size', 3)
    if conv_size != 3:
      raise ValueError(f'Config field model.conv_size = {conv_size!r} is not supported: NCSN++ '
                       'uses 3x3 convolutions; allowed: [3].')
    layers.get_act(config)
    embedding_type = config_checks.choice(config, 'model.embedding_type', EMBEDDING_TYPES)
    fourier_scale = 0.0
    if embedding_type == 'fourier':
      fourier_scale = config_checks.positive_float(config, 'model.fourier_scale')
      if not config_checks.boolean(config, 'training.continuous'):
        raise ValueError("Config field model.embedding_type = 'fourier' embeds the log of a "
                         'real noise level and needs training.continuous = True; allowed for '
                         "discrete training: ['positional'].")
    opts = cls(
        nf=config_checks.positive_int(config, 'model.nf'),
        ch_mult=config_checks.positive_ints(config, 'model.ch_mult', allow_empty=False),
        num_res_blocks=config_checks.positive_int(config, 'model.num_res_blocks'),
        attn_resolutions=config_checks.positive_ints(config, 'model.attn_resolutions', allow_empty=True),
        dropout=config_checks.unit_interval(config, 'model.dropout'),
        resamp_with_conv=config_checks.boolean(config, 'model.resamp_with_conv'),
        conditional=config_checks.boolean(config, 'model.conditional'),
        fir=config_checks.boolean(config, 'model.fir'),
        fir_kernel=_fir_kernel(config),
        skip_rescale=config_checks.boolean(config, 'model.skip_rescale'),
        resblock_type=config_checks.choice(config, 'model.resblock_type', RESBLOCK_TYPES),
        progressive=config_checks.choice(config, 'model.progressive', PROGRESSIVE),
        progressive_input=config_checks.choice(config, 'model.progressive_input',
                                               PROGRESSIVE_INPUT),
        progressive_combine=config_checks.choice(config, 'model.progressive_combine',
                                                 layerspp.COMBINE_METHODS),
        embedding_type=embedding_type,
        fourier_scale=fourier_scale,
        init_scale=config_checks.non_negative(config, 'model.init_scale'),
        scale_by_sigma=config_checks.boolean(config, 'model.scale_by_sigma'),
        centered=config_checks.boolean(config, 'data.centered'))
    for mult in opts.ch_mult:
      channels = opts.nf * mult
      if channels < 4 or channels % min(channels // 4, 32):
        raise ValueError(f'Config fields model.nf = {opts.nf}, model.ch_mult = {opts.ch_mult} '
                         f'give {channels} channels, which GroupNorm cannot split into '
                         f'min(C // 4, 32) groups; use channel counts >= 4 divisible by them.')
    if opts.scale_by_sigma and not config_checks.boolean(config, 'training.continuous'):
      config_checks.positive_int(config, 'model.num_scales')
      config_checks.positive_float(config, 'model.sigma_min')
      config_checks.positive_float(config, 'model.sigma_max')
    return opts


@register_model(name='ncsnpp')
class NCSNpp(nn.Module):
  """NCSN++ / DDPM++ score network: x (B, H, W, C) in [0, 1] ([-1, 1] with data.centered) and
  labels (B,) -> output (B, H, W, C).

  labels are the noise levels sigma with `embedding_type='fourier'` (random Fourier features of
  log sigma) and time steps / indices with 'positional' (sinusoidal features); `conditional`
  projects them through two dense layers into every residual block. With `scale_by_sigma` the
  output is divided by sigma: the labels themselves for 'fourier', sigmas[labels] of the discrete
  VE ladder (layers.get_sigmas) for 'positional' (Song & Ermon 2020, technique 3).

  The U-Net has len(ch_mult) resolutions, nf * ch_mult[i] channels at level i and num_res_blocks
  residual blocks (`resblock_type` ddpm or biggan) per level, self-attention at the spatial sizes
  in `attn_resolutions` and between the two middle blocks, and resamples by 2 between levels (FIR
  `fir_kernel` if `fir`). `progressive_input` feeds the down-sampled input image into every level
  (input_skip: through `Combine` with `progressive_combine`; residual: as a residual branch);
  `progressive` builds the output as a sum of up-sampled per-level images (output_skip) or
  carries a residual up-sampling branch (residual). `skip_rescale` divides every residual sum by
  sqrt(2); `init_scale` initialises the last layer of every residual branch. H and W must be
  multiples of 2^(len(ch_mult) - 1).

  With model.num_classes = n (and `conditional`) the model is class-conditional: class_labels int
  (B,) in 0 .. n (n, and None, the null label) are embedded into 4 nf features added to the
  time embedding (models.conditioning).
  """

  config: ml_collections.ConfigDict
  takes_class_labels = True

  @nn.compact
  def __call__(self, x, labels, train: bool = False, class_labels=None):
    config = self.config
    opts = Options.from_config(config)
    num_classes = conditioning.num_classes(config)
    act = layers.get_act(config)
    levels = len(opts.ch_mult)
    if x.shape[1] % 2**(levels - 1) or x.shape[2] % 2**(levels - 1):
      raise ValueError(f'NCSN++ with model.ch_mult = {opts.ch_mult} halves the image '
                       f'{levels - 1} times; image size {x.shape[1]}x{x.shape[2]} must be a '
                       f'multiple of {2**(levels - 1)}.')

    # Noise-level embedding.
    if opts.embedding_type == 'fourier':
      temb = layerspp.GaussianFourierProjection(embedding_size=opts.nf,
                                                scale=opts.fourier_scale)(jnp.log(labels))
    else:
      temb = layers.get_timestep_embedding(labels, opts.nf)
    if opts.conditional:
      temb = nn.Dense(4 * opts.nf, kernel_init=layers.default_init())(temb)
      temb = nn.Dense(4 * opts.nf, kernel_init=layers.default_init())(act(temb))
    else:
      temb = None
    temb = conditioning.add_class_embedding(temb, class_labels, num_classes)

    def resblock(h, out_ch=None, up=False, down=False):
      if opts.resblock_type == 'biggan':
        block = layerspp.ResnetBlockBigGANpp(
            act, up=up, down=down, out_ch=out_ch, dropout=opts.dropout, fir=opts.fir,
            fir_kernel=opts.fir_kernel, skip_rescale=opts.skip_rescale,
            init_scale=opts.init_scale)
      else:
        block = layerspp.ResnetBlockDDPMpp(act, out_ch=out_ch, dropout=opts.dropout,
                                           skip_rescale=opts.skip_rescale,
                                           init_scale=opts.init_scale)
      return block(h, temb, train)

    def attention(h):
      return layerspp.AttnBlockpp(skip_rescale=opts.skip_rescale, init_scale=opts.init_scale)(h)

    def to_image(h, channels, init_scale):  # GroupNorm, act and a 3x3 conv
      return layers.ddpm_conv3x3(act(layerspp.group_norm(h)), channels, init_scale=init_scale)

    if not opts.centered:
      x = 2 * x - 1.0
    image_channels = x.shape[-1]

    # Down path; hs keeps every level's features for the skip connections.
    pyramid = x
    hs = [layers.ddpm_conv3x3(x, opts.nf)]
    for level in range(levels):
      for _ in range(opts.num_res_blocks):
        h = resblock(hs[-1], out_ch=opts.nf * opts.ch_mult[level])
        if h.shape[1] in opts.attn_resolutions:
          h = attention(h)
        hs.append(h)
      if level == levels - 1:
        break
      if opts.resblock_type == 'ddpm':
        h = layerspp.Downsample(with_conv=opts.resamp_with_conv, fir=opts.fir,
                                fir_kernel=opts.fir_kernel)(hs[-1])
      else:
        h = resblock(hs[-1], down=True)
      if opts.progressive_input == 'input_skip':
        pyramid = layerspp.Downsample(fir=opts.fir, fir_kernel=opts.fir_kernel)(pyramid)
        h = layerspp.Combine(method=opts.progressive_combine)(pyramid, h)
      elif opts.progressive_input == 'residual':
        pyramid = layerspp.Downsample(out_ch=h.shape[-1], with_conv=True, fir=opts.fir,
                                      fir_kernel=opts.fir_kernel)(pyramid)
        h = pyramid = layerspp.skip_sum(pyramid, h, opts.skip_rescale)
      hs.append(h)

    h = resblock(hs[-1])
    h = attention(h)
    h = resblock(h)

    # Up path, from the coarsest level.
    pyramid = None
    for level in reversed(range(levels)):
      for _ in range(opts.num_res_blocks + 1):
        h = resblock(jnp.concatenate([h, hs.pop()], axis=-1), out_ch=opts.nf * opts.ch_mult[level])
      if h.shape[1] in opts.attn_resolutions:
        h = attention(h)

      if opts.progressive == 'output_skip':
        if pyramid is not None:
          pyramid = layerspp.Upsample(fir=opts.fir, fir_kernel=opts.fir_kernel)(pyramid)
        image = to_image(h, image_channels, opts.init_scale)
        pyramid = image if pyramid is None else pyramid + image
      elif opts.progressive == 'residual':
        if pyramid is None:
          pyramid = to_image(h, h.shape[-1], 1.0)
        else:
          pyramid = layerspp.Upsample(out_ch=h.shape[-1], with_conv=True, fir=opts.fir,
                                      fir_kernel=opts.fir_kernel)(pyramid)
          h = pyramid = layerspp.skip_sum(pyramid, h, opts.skip_rescale)

      if level > 0:
        if opts.resblock_type == 'ddpm':
          h = layerspp.Upsample(with_conv=opts.resamp_with_conv, fir=opts.fir,
                                fir_kernel=opts.fir_kernel)(h)
        else:
          h = resblock(h, up=True)

    if opts.progressive == 'output_skip':
      h = pyramid
    else:
      h = to_image(h, image_channels, opts.init_scale)

    if opts.scale_by_sigma:
      h = h / layers.label_sigmas(config, labels).reshape(-1, 1, 1, 1)
    return h
