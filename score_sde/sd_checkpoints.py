"""Stable Diffusion checkpoints read without torch: architectures and parameters of the U-Net, the
KL autoencoder and the CLIP text encoder, in this framework's modules (the single-file layout's
names: score_sde.sd_single_file).

Two layouts:

  diffusers folder   model_index.json and the folders unet/, vae/, text_encoder/, tokenizer/,
                     scheduler/, each with its config.json (scheduler_config.json) and weights
                     (.safetensors, or torch .bin; sharded files through their index.json). The
                     configs define the architecture.
  single file        the original CompVis / Stability layout, one .safetensors or .ckpt holding
                     model.diffusion_model.* (U-Net), first_stage_model.* (VAE) and
                     cond_stage_model.transformer.* (SD 1.x: CLIP ViT-L, transformers' names) or
                     cond_stage_model.model.* (SD 2.x: OpenCLIP ViT-H). It holds no sizes, so the
                     architecture comes from a preset (PRESETS) or from a diffusers folder's
                     configs (weights there are not read), as diffusers' from_single_file does.

Parameters in diffusers' names (the single file's renamed by sd_single_file) map to our params
paths (`params_path`: '.<i>' joins its module, weight -> kernel / scale / embedding, PyTorch's
(out, in, ...) layouts transposed) and are checked leaf by leaf against the modules the
architecture builds (`network_params`): every missing, unexpected or wrongly shaped tensor of
the three networks is reported by name in one ValueError.
"""
import dataclasses
import glob
import json
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from score_sde import tensor_files
from score_sde.models import autoencoder, clip_text, unet_ldm
from score_sde.prediction import PREDICTION_TYPES

BETA_SCHEDULES = {'scaled_linear': 'scaled_linear', 'linear': 'linear',
                  'squaredcos_cap_v2': 'cosine'}  # diffusers name -> VPSDE beta_schedule


@dataclasses.dataclass(frozen=True)
class Schedule:
  """The discrete noise schedule of the diffusers scheduler config: betas from beta_start to
  beta_end over num_train_timesteps steps, spaced by `beta_schedule` (a diffusers name)."""

  beta_start: float = 0.00085
  beta_end: float = 0.012
  beta_schedule: str = 'scaled_linear'
  num_train_timesteps: int = 1000

  def betas(self) -> np.ndarray:
    """The N betas (float64), as diffusers computes them."""
    n = self.num_train_timesteps
    if self.beta_schedule == 'scaled_linear':
      return np.linspace(self.beta_start**0.5, self.beta_end**0.5, n)**2
    if self.beta_schedule == 'linear':
      return np.linspace(self.beta_start, self.beta_end, n)
    f = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2)**2  # noqa: E731
    steps = np.arange(n)
    return np.minimum(1 - f((steps + 1) / n) / f(steps / n), 0.999)


@dataclasses.dataclass(frozen=True)
class Architecture:
  """Everything that sizes a Stable Diffusion pipeline. `pad_token` is the tokenizer's padding
  token (None: the tokenizer files'); `sample_size` the default image height and width in
  pixels; `scheduler` the scheduler config's other settings (steps_offset, ...), for samplers
  that reproduce it."""

  unet: unet_ldm.UNetConfig
  vae: autoencoder.AutoencoderConfig
  text: clip_text.CLIPTextConfig
  schedule: Schedule = Schedule()
  prediction_type: str = 'epsilon'
  sample_size: int = 512
  pad_token: Optional[str] = None
  scheduler: tuple = ()

  def __post_init__(self):
    if self.prediction_type not in PREDICTION_TYPES:
      raise ValueError(f'prediction_type = {self.prediction_type!r} is not supported; allowed: '
                       f'{list(PREDICTION_TYPES)}.')


_SD2_UNET = unet_ldm.UNetConfig(num_heads=None, head_dim=(64, 64, 64, 64), context_dim=1024,
                                linear_projection=True)
_SD2_TEXT = clip_text.CLIPTextConfig(hidden_size=1024, intermediate_size=4096, num_layers=23,
                                     num_heads=16, activation='gelu')
PRESETS = {
    'sd1': Architecture(unet_ldm.UNetConfig(), autoencoder.AutoencoderConfig(),
                        clip_text.CLIPTextConfig(), sample_size=512, pad_token='<|endoftext|>'),
    'sd2': Architecture(_SD2_UNET, autoencoder.AutoencoderConfig(), _SD2_TEXT,
                        prediction_type='v_prediction', sample_size=768, pad_token='!'),
    'sd2-base': Architecture(_SD2_UNET, autoencoder.AutoencoderConfig(), _SD2_TEXT,
                             sample_size=512, pad_token='!'),
}


# ---------------------------------------------------------------------------------------------
# Architectures from diffusers configs.


def _read_json(path: str, what: str) -> dict:
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} is missing: expected the {what}.')
  with open(path, encoding='utf-8') as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as error:
      raise ValueError(f'{path} is not valid JSON ({error}); expected the {what}.') from error


def _per_block(value, count: int, name: str, problems: list) -> tuple:
  """An int or a list of `count` values, as a tuple of `count`."""
  if isinstance(value, (list, tuple)):
    if len(value) != count:
      problems.append(f'{name} = {value} has {len(value)} entries for {count} blocks')
    return tuple(value)
  return (value,) * count


def _check_unsupported(config: dict, defaults: dict, problems: list) -> None:
  """Adds a problem for every key of `defaults` that `config` sets to another value."""
  for key, default in defaults.items():
    value = config.get(key, default)
    if value != default and not (isinstance(default, tuple) and tuple(value or ()) == default):
      problems.append(f'{key} = {value!r} is not supported (only {default!r})')


_UNET_UNSUPPORTED = {
    'class_embed_type': None, 'addition_embed_type': None, 'time_embedding_type': 'positional',
    'resnet_time_scale_shift': 'default', 'center_input_sample': False,
    'only_cross_attention': False, 'dual_cross_attention': False, 'encoder_hid_dim': None,
    'time_cond_proj_dim': None, 'conv_in_kernel': 3, 'conv_out_kernel': 3, 'act_fn': 'silu',
    'downsample_padding': 1, 'mid_block_scale_factor': 1, 'num_class_embeds': None,
    'mid_block_type': 'UNetMidBlock2DCrossAttn', 'timestep_post_act': None,
    'attention_type': 'default', 'cross_attention_norm': None, 'resnet_out_scale_factor': 1.0,
    'resnet_skip_time_act': False, 'time_embedding_act_fn': None, 'time_embedding_dim': None,
    'encoder_hid_dim_type': None, 'class_embeddings_concat': False,
    'addition_time_embed_dim': None,
}
_DOWN_TYPES = {'CrossAttnDownBlock2D': True, 'DownBlock2D': False}
_UP_TYPES = {True: 'CrossAttnUpBlock2D', False: 'UpBlock2D'}


def unet_config(config: dict, where: str) -> unet_ldm.UNetConfig:
  """The U-Net of a diffusers UNet2DConditionModel config.json (its `attention_head_dim` counts
  heads, as diffusers reads it, unless num_attention_heads is set); ValueError listing every
  setting this U-Net does not implement."""
  problems = []
  _check_unsupported(config, _UNET_UNSUPPORTED, problems)
  down = list(config.get('down_block_types', ()))
  unknown = [t for t in down if t not in _DOWN_TYPES]
  if unknown or not down:
    problems.append(f'down_block_types {down}: allowed block types {sorted(_DOWN_TYPES)}')
  attends = tuple(_DOWN_TYPES.get(t, False) for t in down)
  mirror = [_UP_TYPES[a] for a in reversed(attends)]
  if list(config.get('up_block_types', ())) != mirror:
    problems.append(f'up_block_types {config.get("up_block_types")} must mirror the down blocks: '
                    f'{mirror}')
  count = len(down)
  layers = config.get('layers_per_block', 2)
  if isinstance(layers, (list, tuple)):
    if len(set(layers)) != 1:
      problems.append(f'layers_per_block = {layers}: only one value for all blocks')
    layers = layers[0]
  heads = config.get('num_attention_heads') or config.get('attention_head_dim', 8)
  context = config.get('cross_attention_dim', 1280)
  if isinstance(context, (list, tuple)):
    problems.append(f'cross_attention_dim = {context}: one width for all blocks only')
  fields = dict(
      in_channels=config.get('in_channels', 4), out_channels=config.get('out_channels', 4),
      block_channels=tuple(config.get('block_out_channels', ())), layers_per_block=layers,
      cross_attention=attends, num_heads=_per_block(heads, count, 'heads', problems),
      head_dim=None,
      transformer_depth=_per_block(config.get('transformer_layers_per_block', 1), count,
                                   'transformer_layers_per_block', problems),
      context_dim=context, norm_groups=config.get('norm_num_groups', 32),
      norm_eps=config.get('norm_eps', 1e-5),
      linear_projection=bool(config.get('use_linear_projection', False)),
      flip_sin_to_cos=bool(config.get('flip_sin_to_cos', True)),
      freq_shift=float(config.get('freq_shift', 0)))
  if problems:
    raise ValueError(f'{where}: this U-Net configuration is not supported:\n  ' +
                     '\n  '.join(problems))
  return unet_ldm.UNetConfig(**fields)


_VAE_UNSUPPORTED = {'act_fn': 'silu', 'shift_factor': None, 'use_quant_conv': True,
                    'use_post_quant_conv': True, 'mid_block_add_attention': True,
                    'latents_mean': None, 'latents_std': None}


def vae_config(config: dict, where: str) -> autoencoder.AutoencoderConfig:
  """The autoencoder of a diffusers AutoencoderKL config.json; ValueError for settings it lacks."""
  problems = []
  _check_unsupported(config, _VAE_UNSUPPORTED, problems)
  channels = tuple(config.get('block_out_channels', (64,)))
  for key, block in (('down_block_types', 'DownEncoderBlock2D'),
                     ('up_block_types', 'UpDecoderBlock2D')):
    types = list(config.get(key, [block]))
    if types != [block] * len(channels):
      problems.append(f'{key} = {types}: {len(channels)} x {block} only')
  if problems:
    raise ValueError(f'{where}: this autoencoder configuration is not supported:\n  ' +
                     '\n  '.join(problems))
  return autoencoder.AutoencoderConfig(
      in_channels=config.get('in_channels', 3), out_channels=config.get('out_channels', 3),
      block_channels=channels, layers_per_block=config.get('layers_per_block', 1),
      latent_channels=config.get('latent_channels', 4),
      norm_groups=config.get('norm_num_groups', 32),
      scaling_factor=float(config.get('scaling_factor', 0.18215)))


def text_config(config: dict, where: str) -> clip_text.CLIPTextConfig:
  """The text transformer of a transformers CLIPTextModel config.json."""
  try:
    return clip_text.CLIPTextConfig(
        vocab_size=config['vocab_size'], hidden_size=config['hidden_size'],
        intermediate_size=config['intermediate_size'], num_layers=config['num_hidden_layers'],
        num_heads=config['num_attention_heads'],
        max_positions=config.get('max_position_embeddings', 77),
        activation=config.get('hidden_act', 'quick_gelu'),
        layer_norm_eps=config.get('layer_norm_eps', 1e-5))
  except (KeyError, ValueError) as error:
    raise ValueError(f'{where}: not a supported CLIP text model config ({error}).') from error


_SCHEDULER_SETTINGS = ('steps_offset', 'set_alpha_to_one', 'timestep_spacing', 'clip_sample',
                       'thresholding')


def scheduler_settings(config: dict, where: str) -> tuple:
  """(Schedule, prediction_type, other settings) of a diffusers scheduler_config.json."""
  if config.get('trained_betas') is not None or config.get('rescale_betas_zero_snr'):
    raise ValueError(f'{where}: trained_betas and rescale_betas_zero_snr are not supported; '
                     'only beta_start / beta_end with a beta_schedule.')
  schedule = Schedule(beta_start=float(config.get('beta_start', 0.0001)),
                      beta_end=float(config.get('beta_end', 0.02)),
                      beta_schedule=config.get('beta_schedule', 'linear'),
                      num_train_timesteps=int(config.get('num_train_timesteps', 1000)))
  if schedule.beta_schedule not in BETA_SCHEDULES:
    raise ValueError(f'{where}: beta_schedule = {schedule.beta_schedule!r} is not supported; '
                     f'allowed: {sorted(BETA_SCHEDULES)}.')
  prediction = config.get('prediction_type', 'epsilon')
  if prediction not in PREDICTION_TYPES:
    raise ValueError(f'{where}: prediction_type = {prediction!r} is not supported; allowed: '
                     f'{list(PREDICTION_TYPES)}.')
  return schedule, prediction, tuple((k, config[k]) for k in _SCHEDULER_SETTINGS if k in config)


_COMPONENTS = ('unet', 'vae', 'text_encoder', 'tokenizer', 'scheduler')


def folder_architecture(folder: str) -> Architecture:
  """The Architecture a diffusers Stable Diffusion folder's configs describe."""
  index = _read_json(os.path.join(folder, 'model_index.json'), 'diffusers pipeline index')
  missing = [c for c in _COMPONENTS if not index.get(c) or index[c][0] is None]
  if missing:
    raise ValueError(f'{folder}/model_index.json names no {missing}: a Stable Diffusion folder '
                     f'has {list(_COMPONENTS)}.')

  def component(name, file_name='config.json'):
    path = os.path.join(folder, name, file_name)
    return _read_json(path, f'{name} config'), path

  unet_json, unet_path = component('unet')
  unet = unet_config(unet_json, unet_path)
  vae = vae_config(*component('vae'))
  schedule, prediction, settings = scheduler_settings(
      *component('scheduler', 'scheduler_config.json'))
  return Architecture(unet=unet, vae=vae, text=text_config(*component('text_encoder')),
                      schedule=schedule, prediction_type=prediction,
                      sample_size=int(unet_json.get('sample_size', 64)) * vae.downsampling,
                      scheduler=settings)


# ---------------------------------------------------------------------------------------------
# Weight files.


def read_weight_file(path: str) -> dict:
  """{name: array} of a .safetensors file or a torch.save file (the state_dict of a .ckpt)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} is missing.')
  if path.endswith('.safetensors'):
    return tensor_files.read_safetensors(path)
  saved = tensor_files.read_torch_file(path, opaque_globals=True)
  if isinstance(saved, dict) and isinstance(saved.get('state_dict'), dict):
    saved = saved['state_dict']
  if not isinstance(saved, dict):
    raise ValueError(f'{path} holds a {type(saved).__name__}, not a dict of tensors.')
  return {k: v for k, v in saved.items() if isinstance(v, np.ndarray)}


def component_weights(folder: str, name: str) -> dict:
  """The tensors of a diffusers component folder: its one weight file (.safetensors preferred
  over .bin, the full-precision file over a .fp16 variant) or the shards of its index.json."""
  directory = os.path.join(folder, name)
  candidates = sorted(glob.glob(os.path.join(directory, '*.safetensors'))) or sorted(
      glob.glob(os.path.join(directory, '*.bin')))
  indexes = sorted(glob.glob(os.path.join(directory, '*.index.json')))
  if indexes:
    shards = sorted(set(_read_json(indexes[0], 'shard index')['weight_map'].values()))
    tensors = {}
    for shard in shards:
      tensors.update(read_weight_file(os.path.join(directory, shard)))
    return tensors
  if not candidates:
    raise FileNotFoundError(f'{directory} holds no weights: expected a .safetensors (or torch '
                            '.bin) file.')
  full = [c for c in candidates if '.fp16.' not in os.path.basename(c)]
  return read_weight_file((full or candidates)[0])


# ---------------------------------------------------------------------------------------------
# diffusers names -> our params.

_DEPRECATED_ATTENTION = {'query': 'to_q', 'key': 'to_k', 'value': 'to_v', 'proj_attn': 'to_out.0'}


def params_path(name: str, value: np.ndarray) -> tuple:
  """(our params path, value in our layout) of the diffusers / transformers tensor `name`:
  'down_blocks.0.resnets.1.conv1.weight' -> 'down_blocks_0/resnets_1/conv1/kernel', with conv
  weights (O, I, kh, kw) -> (kh, kw, I, O), dense (O, I) -> (I, O), 1-D weights -> scale,
  embeddings' weights -> embedding."""
  parts = []
  for part in name.split('.'):
    if part.isdigit() and parts:
      parts[-1] = f'{parts[-1]}_{part}'
    else:
      parts.append(part)
  *module, leaf = parts
  if leaf == 'weight':
    if module and module[-1].endswith('embedding'):
      leaf = 'embedding'
    elif value.ndim == 4:
      leaf, value = 'kernel', np.transpose(value, (2, 3, 1, 0))
    elif value.ndim == 2:
      leaf, value = 'kernel', value.T
    elif value.ndim == 1:
      leaf = 'scale'
  return '/'.join(module + [leaf]), value


def _undeprecate(name: str) -> str:
  """Old diffusers VAE attention names (query, key, value, proj_attn) -> today's."""
  head, _, tail = name.rpartition('.')
  module_head, _, module = head.rpartition('.')
  if module in _DEPRECATED_ATTENTION and 'attentions' in name:
    return f'{module_head}.{_DEPRECATED_ATTENTION[module]}.{tail}'
  return name


def params_from_tensors(tensors: dict, shapes: dict, what: str, origins: Optional[dict] = None,
                        notes: tuple = ()) -> dict:
  """Our params tree (nested dicts of numpy arrays cast to the dtypes of `shapes`) from
  diffusers-named tensors; ValueError listing every mismatch with the file's names."""
  flat, where = {}, {}
  origins = origins or {}
  for name, value in tensors.items():
    name = _undeprecate(name)
    path, value = params_path(name, np.asarray(value))
    flat[path], where[path] = value, origins.get(name, name)
  return tensor_files.match_params(traverse_util.unflatten_dict(flat, sep='/'), shapes, what,
                                   where, notes)


# ---------------------------------------------------------------------------------------------
# Shapes of our modules.


def param_shapes(module, *example_inputs, method=None, dtype=jnp.float32) -> dict:
  """The params tree of `module` as ShapeDtypeStructs of `dtype`, computed without any FLOPs."""
  def init():
    return module.init(jax.random.PRNGKey(0), *example_inputs, method=method)['params']

  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype), jax.eval_shape(init))


def text_encoder_tensors(tensors: dict) -> dict:
  """transformers CLIP tensors without their 'text_model.' prefix, position ids and projection
  (not parameters of the text transformer)."""
  out = {}
  for name, value in tensors.items():
    name = name[len('text_model.'):] if name.startswith('text_model.') else name
    if name not in ('embeddings.position_ids', 'text_projection.weight'):
      out[name] = value
  return out


def network_params(architecture: Architecture, tensors: dict, origins: dict, dtype,
                   where: str) -> dict:
  """{'unet' | 'vae' | 'text': params tree of jax arrays of `dtype`} from diffusers-named tensors
  {'unet' | 'vae' | 'text': {name: array}} ({name: origin in the file} in `origins`), each
  checked against its module; one ValueError, naming `where`, lists every network's problems."""
  a = architecture
  f = a.unet.downsampling
  modules = {
      'unet': (unet_ldm.UNet(a.unet), (jnp.zeros((1, f, f, a.unet.in_channels)), jnp.zeros((1,)),
                                       jnp.zeros((1, 1, a.unet.context_dim)))),
      'vae': (autoencoder.AutoencoderKL(a.vae),
              (jnp.zeros((1, a.vae.downsampling, a.vae.downsampling, a.vae.in_channels)),)),
      'text': (clip_text.CLIPTextTransformer(a.text), (jnp.zeros((1, 1), jnp.int32),)),
  }
  params, problems = {}, []
  for name, (module, inputs) in modules.items():
    shapes = param_shapes(module, *inputs, dtype=dtype)
    try:
      tree = params_from_tensors(tensors[name], shapes, f'the {name}', origins.get(name))
    except ValueError as error:
      problems.append(str(error))
      continue
    params[name] = jax.tree.map(jnp.asarray, tree)
  if problems:
    raise ValueError(f'{where} does not fit the architecture:\n' + '\n'.join(problems))
  return params
