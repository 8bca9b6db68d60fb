"""The original single-file layout of Stable Diffusion checkpoints (CompVis / Stability: one
.safetensors or .ckpt with model.diffusion_model.*, first_stage_model.* and
cond_stage_model.transformer.* (SD 1.x, transformers' CLIP names) or cond_stage_model.model.*
(SD 2.x, OpenCLIP)), renamed to diffusers' names, from which score_sde.sd_checkpoints maps them
onto our params.

The U-Net's and VAE's LDM names follow their blocks' positions (`ldm_unet_name`,
`ldm_vae_name`), which depend on the architecture; OpenCLIP packs q, k and v into one in_proj
(`openclip_tensors`). Tensors that are not parameters of the three networks (schedule buffers,
EMA copies, position ids, OpenCLIP's projection and unused last layer) are left out by explicit
rules; anything else outside the three networks is refused by name.
"""
import re

import numpy as np

from score_sde.models import autoencoder, unet_ldm
from score_sde.sd_checkpoints import Architecture, Schedule


_LDM_RESNET = {'in_layers.0': 'norm1', 'in_layers.2': 'conv1', 'emb_layers.1': 'time_emb_proj',
               'out_layers.0': 'norm2', 'out_layers.3': 'conv2', 'skip_connection': 'conv_shortcut'}
_LDM_UNET_TOP = {'time_embed.0': 'time_embedding.linear_1',
                 'time_embed.2': 'time_embedding.linear_2', 'input_blocks.0.0': 'conv_in',
                 'out.0': 'conv_norm_out', 'out.2': 'conv_out'}


def _resnet_name(rest: str) -> str:
  for old, new in _LDM_RESNET.items():
    if rest.startswith(old + '.'):
      return new + rest[len(old):]
  return rest


def ldm_unet_name(name: str, config: unet_ldm.UNetConfig) -> str:
  """The diffusers name of U-Net tensor `name` (without 'model.diffusion_model.') of the LDM
  layout: input_blocks.k (k = 1 + i (L + 1) + j: down block i, layer j; j = L its downsampler),
  middle_block.0-2, output_blocks.k (k = u (L + 1) + j: up block u, layer j, the upsampler last),
  each entry's .0 its ResNet block (or sampler) and .1 its transformer. Unknown names come back
  unchanged (and are then reported as unexpected)."""
  for old, new in _LDM_UNET_TOP.items():
    if name.startswith(old + '.'):
      return new + name[len(old):]
  per_block = config.layers_per_block + 1
  match = re.match(r'(input_blocks|middle_block|output_blocks)\.(\d+)\.(?:(\d+)\.)?(.*)', name)
  if not match:
    return name
  kind, k, sub, rest = match.group(1), int(match.group(2)), match.group(3), match.group(4)
  if kind == 'middle_block':
    target = {0: 'mid_block.resnets.0', 1: 'mid_block.attentions.0', 2: 'mid_block.resnets.1'}
    if k not in target:
      return name
    rest = f'{sub}.{rest}' if sub is not None else rest
    return f'{target[k]}.{_resnet_name(rest) if k != 1 else rest}'
  if sub is None:
    return name
  sub = int(sub)
  if kind == 'input_blocks':
    block, layer = divmod(k - 1, per_block)
    if layer == config.layers_per_block:
      return f'down_blocks.{block}.downsamplers.0.conv{rest[len("op"):]}' if (
          sub == 0 and rest.startswith('op.')) else name
    prefix = f'down_blocks.{block}'
  else:
    block, layer = divmod(k, per_block)
    prefix = f'up_blocks.{block}'
    if rest.startswith('conv.') and sub > 0:
      return f'{prefix}.upsamplers.0.{rest}'
  if sub == 0:
    return f'{prefix}.resnets.{layer}.{_resnet_name(rest)}'
  return f'{prefix}.attentions.{layer}.{rest}'


_LDM_VAE_ATTENTION = {'norm': 'group_norm', 'q': 'to_q', 'k': 'to_k', 'v': 'to_v',
                      'proj_out': 'to_out.0'}


def ldm_vae_name(name: str, config: autoencoder.AutoencoderConfig) -> str:
  """The diffusers name of VAE tensor `name` (without 'first_stage_model.') of the LDM layout:
  encoder.down.i.block.j / .downsample, decoder.up.i (i counted from the highest resolution, so
  diffusers' up block len - 1 - i), mid.block_1 / attn_1 / block_2, norm_out, nin_shortcut."""
  blocks = len(config.block_channels)
  name = re.sub(r'\.nin_shortcut\.', '.conv_shortcut.', name)
  name = re.sub(r'^(encoder|decoder)\.norm_out\.', r'\1.conv_norm_out.', name)
  name = re.sub(r'^encoder\.down\.(\d+)\.block\.', r'encoder.down_blocks.\1.resnets.', name)
  name = re.sub(r'^encoder\.down\.(\d+)\.downsample\.', r'encoder.down_blocks.\1.downsamplers.0.',
                name)
  match = re.match(r'^decoder\.up\.(\d+)\.(block|upsample)\.(.*)', name)
  if match:
    block = blocks - 1 - int(match.group(1))
    kind = 'resnets.' if match.group(2) == 'block' else 'upsamplers.0.'
    name = f'decoder.up_blocks.{block}.{kind}{match.group(3)}'
  name = re.sub(r'^(encoder|decoder)\.mid\.block_(\d)\.',
                lambda m: f'{m.group(1)}.mid_block.resnets.{int(m.group(2)) - 1}.', name)
  match = re.match(r'^(encoder|decoder)\.mid\.attn_1\.(\w+)\.(\w+)$', name)
  if match and match.group(2) in _LDM_VAE_ATTENTION:
    name = (f'{match.group(1)}.mid_block.attentions.0.{_LDM_VAE_ATTENTION[match.group(2)]}.'
            f'{match.group(3)}')
  return name


_OPENCLIP = {'ln_1': 'layer_norm1', 'ln_2': 'layer_norm2', 'mlp.c_fc': 'mlp.fc1',
             'mlp.c_proj': 'mlp.fc2', 'attn.out_proj': 'self_attn.out_proj'}
_OPENCLIP_TOP = {'token_embedding.weight': 'embeddings.token_embedding.weight',
                 'positional_embedding': 'embeddings.position_embedding.weight',
                 'ln_final.weight': 'final_layer_norm.weight',
                 'ln_final.bias': 'final_layer_norm.bias'}


def openclip_tensors(tensors: dict, num_layers: int) -> tuple:
  """(transformers-named tensors, {new name: OpenCLIP name}) of OpenCLIP's text tower (names
  without 'cond_stage_model.model.'): attn.in_proj_weight / bias split into q, k, v. Left out:
  resblocks from num_layers on (SD 2.x conditions on the penultimate layer, so diffusers' encoder
  has one layer less than the file), text_projection and logit_scale. Other names pass unchanged
  (and are then reported as unexpected)."""
  out, origins = {}, {}
  for name, value in tensors.items():
    match = re.match(r'^transformer\.resblocks\.(\d+)\.(.+?)[._](weight|bias)$', name)
    if name in ('text_projection', 'logit_scale') or (match and int(match.group(1)) >= num_layers):
      continue
    if not match:
      new = _OPENCLIP_TOP.get(name, name)
      out[new], origins[new] = value, name
      continue
    layer, module, leaf = match.groups()
    if module == 'attn.in_proj':
      for part, chunk in zip('qkv', np.split(np.asarray(value), 3, axis=0)):
        new = f'encoder.layers.{layer}.self_attn.{part}_proj.{leaf}'
        out[new], origins[new] = chunk, name
    else:
      new = f'encoder.layers.{layer}.{_OPENCLIP.get(module, module)}.{leaf}'
      out[new], origins[new] = value, name
  return out, origins


# Single-file tensors that are not parameters of the three networks.
_IGNORED_SINGLE_FILE = re.compile(
    r'^(betas|alphas_cumprod|alphas_cumprod_prev|sqrt_alphas_cumprod|'
    r'sqrt_one_minus_alphas_cumprod|log_one_minus_alphas_cumprod|sqrt_recip_alphas_cumprod|'
    r'sqrt_recipm1_alphas_cumprod|posterior_variance|posterior_log_variance_clipped|'
    r'posterior_mean_coef1|posterior_mean_coef2|logvar|lvlb_weights|model_ema\..*|'
    r'first_stage_model\.loss\..*|cond_stage_model\.transformer\.(text_model\.)?embeddings\.'
    r'position_ids)$')
_VAE_ATTENTION_WEIGHT = re.compile(r'^(encoder|decoder)\.mid_block\.attentions\.0\.'
                                   r'(to_q|to_k|to_v|to_out\.0)\.weight$')
SD1_TEXT_PREFIX, SD2_TEXT_PREFIX = 'cond_stage_model.transformer.', 'cond_stage_model.model.'


def family_of(tensors: dict) -> str:
  """'sd1' (a CLIP text encoder in transformers' names) or 'sd2' (OpenCLIP) from a single file's
  tensor names; ValueError if it holds neither, or no U-Net."""
  names = list(tensors)
  if not any(n.startswith('model.diffusion_model.') for n in names):
    raise ValueError('Not a Stable Diffusion single-file checkpoint: no model.diffusion_model.* '
                     'tensors (the U-Net).')
  if any(n.startswith(SD2_TEXT_PREFIX) for n in names):
    return 'sd2'
  if any(n.startswith(SD1_TEXT_PREFIX) for n in names):
    return 'sd1'
  raise ValueError('No text encoder in the checkpoint: expected cond_stage_model.transformer.* '
                   '(SD 1.x) or cond_stage_model.model.* (SD 2.x).')


def split_single_file(tensors: dict, architecture: Architecture, path: str) -> tuple:
  """({'unet' | 'vae' | 'text': diffusers-named tensors}, {component: {name: origin}}) of a
  single-file checkpoint; ValueError for tensors that belong to none of them, and for schedule
  buffers (betas) that disagree with the architecture's schedule."""
  parts = {'unet': {}, 'vae': {}, 'text': {}}
  origins = {'unet': {}, 'vae': {}, 'text': {}}
  openclip, strangers = {}, []
  for name, value in tensors.items():
    if _IGNORED_SINGLE_FILE.match(name):
      continue
    if name.startswith('model.diffusion_model.'):
      new = ldm_unet_name(name[len('model.diffusion_model.'):], architecture.unet)
      parts['unet'][new], origins['unet'][new] = value, name
    elif name.startswith('first_stage_model.'):
      new = ldm_vae_name(name[len('first_stage_model.'):], architecture.vae)
      if _VAE_ATTENTION_WEIGHT.match(new) and np.ndim(value) == 4:
        value = np.asarray(value)[:, :, 0, 0]  # LDM's 1x1 convs are diffusers' dense layers
      parts['vae'][new], origins['vae'][new] = value, name
    elif name.startswith(SD1_TEXT_PREFIX):
      new = name[len(SD1_TEXT_PREFIX):]
      new = new[len('text_model.'):] if new.startswith('text_model.') else new
      parts['text'][new], origins['text'][new] = value, name
    elif name.startswith(SD2_TEXT_PREFIX):
      openclip[name[len(SD2_TEXT_PREFIX):]] = value
    else:
      strangers.append(name)
  if openclip:
    renamed, where = openclip_tensors(openclip, architecture.text.num_layers)
    parts['text'].update(renamed)
    origins['text'].update({k: SD2_TEXT_PREFIX + v for k, v in where.items()})
  if strangers:
    raise ValueError(f'{path} holds tensors outside the U-Net, VAE and text encoder of Stable '
                     f'Diffusion: {sorted(strangers)[:20]}' +
                     (f' and {len(strangers) - 20} more' if len(strangers) > 20 else ''))
  if 'betas' in tensors:
    _check_betas(np.asarray(tensors['betas'], np.float64), architecture.schedule, path)
  return parts, origins


def _check_betas(stored: np.ndarray, schedule: Schedule, path: str) -> None:
  expected = schedule.betas()
  if stored.shape != expected.shape or not np.allclose(stored, expected, rtol=1e-2, atol=0):
    raise ValueError(f'{path}: its betas ({stored.shape[0]} from {stored[0]:.6g} to '
                     f'{stored[-1]:.6g}) are not the architecture\'s {schedule}.')
