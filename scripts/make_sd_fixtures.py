"""Make the Stable Diffusion reference fixtures under tests/data/sd/.

Builds two tiny Stable Diffusion pipelines with random weights, one shaped like SD 1.x ("sd1") and
one like SD 2.x ("sd2"), and writes, for each family F:

  F_diffusers/            the pipeline as `StableDiffusionPipeline.save_pretrained` lays it out
                          (model_index.json; unet/ vae/ text_encoder/ tokenizer/ scheduler/,
                          each with its config; weights as .safetensors: sd1 float32, sd2
                          float16)
  sd1_single.ckpt         the original LDM/CompVis single-file layout (torch.save of
                          {'state_dict': ..., 'global_step': 0}, float16 tensors) for sd1;
  sd2_single.safetensors  the same layout as bfloat16 safetensors for sd2, with the text encoder in
                          OpenCLIP names and one resblock more than the diffusers text encoder
                          (SD 2.x conditions on the penultimate layer), plus text_projection and
                          logit_scale
  F_reference.npz         float32 CPU outputs of diffusers/transformers on fixed inputs: token ids,
                          text hidden states, U-Net, VAE encode/decode, and a 10-step DDIM
                          text-to-image run with classifier-free guidance (images and latents NHWC)
  F_e2e.json              the prompts and settings of that end-to-end run
  prompts.json            the prompts whose token ids and hidden states the npz files hold

The weights are rounded so that every stored copy holds the same numbers: sd1 to
float16-representable values, sd2 to values representable in both bfloat16 and float16. Every run
loads the single files back through diffusers' own original-format conversion
(`StableDiffusionPipeline.from_single_file` with the diffusers folder as config, and the
converters in `diffusers.loaders.single_file_utils` one by one) and fails unless every tensor
equals the diffusers folder's exactly.

The tokenizer is a CLIP byte-level BPE built from the first 1000 merges of OpenAI CLIP's
`bpe_simple_vocab_16e6.txt.gz` (1514 tokens), which ships inside the open_clip_torch wheel:

    pip download --no-deps open_clip_torch -d /work/scratch/wheels   # not installed, only unzipped

Run from the repository root, in the scratch venv that has torch, diffusers and transformers
(the project itself never depends on them, and this script does not import score_sde):

    HF_HUB_OFFLINE=1 /work/scratch/ref/bin/python scripts/make_sd_fixtures.py --out tests/data/sd

Nothing is downloaded; the script is deterministic (fixed seeds) up to float rounding of the
CPU kernels in the reference outputs.
"""

import argparse
import copy
import gzip
import hashlib
import io
import json
import math
import os
import pathlib
import shutil
import zipfile

os.environ.setdefault('HF_HUB_OFFLINE', '1')

import numpy as np  # noqa: E402
import safetensors.torch  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import diffusers  # noqa: E402
from diffusers import (  # noqa: E402
  AutoencoderKL,
  DDIMScheduler,
  PNDMScheduler,
  StableDiffusionImg2ImgPipeline,
  StableDiffusionPipeline,
  UNet2DConditionModel,
)
from diffusers.loaders import single_file_utils  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

BPE_DEFAULT = '/work/scratch/wheels/bpe_simple_vocab_16e6.txt.gz'
BPE_SHA256 = '924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a'
NUM_MERGES = 1000
MAX_LENGTH = 77
SIZE_LIMIT = 4_500_000  # bytes, all fixtures together

PROMPTS = [
  'a photograph of an astronaut riding a horse',
  'a red cube on a blue table',
  '',
  '  A   Painting\tof a  CAT  ',
  "it's Van-Gogh's 'Starry Night' (1889)!!",
  '12345 and 3.14',
  'café naïve résumé',
  '東京の夜景',
  'a happy dog 🐶 on the beach',
  (
    'an extremely detailed matte painting of a sprawling futuristic city at dusk, '
    'with towering glass spires, flying vehicles, neon signs reflected in rain-soaked '
    'streets, crowds of people with umbrellas, distant mountains under a violet sky, '
    'volumetric light, cinematic composition, trending on artstation, octane render, '
    'eight kilometres of skyline'
  ),
]

E2E = {
  'prompt': ['a red cube on a blue table', 'a portrait of a cat'],
  'negative_prompt': ['', 'blurry'],
  'num_inference_steps': 10,
  'guidance_scale': 7.5,
  'height': 32,
  'width': 32,
  'eta': 0.0,
  'scheduler': 'DDIMScheduler.from_config(pipe.scheduler.config)',
  'img2img_strength': 0.6,
  'img2img_seed': 7,
}

SCHEDULE = {'beta_start': 0.00085, 'beta_end': 0.012, 'num_train_timesteps': 1000}

FAMILIES = {
  'sd1': {
    'seed': 1,
    'store_dtype': torch.float16,  # the single file; the diffusers folder is float32
    'folder_dtype': torch.float32,
    'pad_token': '<|endoftext|>',
    'unet': dict(
      layers_per_block=2,
      attention_head_dim=2,
      use_linear_projection=False,
      upcast_attention=False,
      cross_attention_dim=32,
    ),
    'text': dict(hidden_size=32, intermediate_size=37, hidden_act='quick_gelu'),
    # scheduler/scheduler_config.json as SD 1.5 ships it (PNDM keeps clip_sample unused, so
    # that DDIMScheduler.from_config(pipe.scheduler.config) inherits clip_sample=False)
    'scheduler': (PNDMScheduler, dict(skip_prk_steps=True, prediction_type='epsilon')),
  },
  'sd2': {
    'seed': 2,
    'store_dtype': torch.bfloat16,
    'folder_dtype': torch.float16,
    'pad_token': '!',
    'unet': dict(
      layers_per_block=1,
      attention_head_dim=(2, 2, 4),
      use_linear_projection=True,
      upcast_attention=True,
      cross_attention_dim=48,
    ),
    'text': dict(hidden_size=48, intermediate_size=64, hidden_act='gelu'),
    # as SD 2.1-768 ships it (skip_prk_steps is a leftover there, unused by DDIM)
    'scheduler': (
      DDIMScheduler,
      dict(skip_prk_steps=True, prediction_type='v_prediction', timestep_spacing='leading'),
    ),
  },
}


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------


def bytes_to_unicode():
  """CLIP's (and GPT-2's) reversible map from the 256 byte values to printable characters."""
  printable = (
    list(range(ord('!'), ord('~') + 1))
    + list(range(ord('¡'), ord('¬') + 1))
    + list(range(ord('®'), ord('ÿ') + 1))
  )
  codes = printable[:]
  extra = 0
  for b in range(256):
    if b not in printable:
      printable.append(b)
      codes.append(256 + extra)
      extra += 1
  return dict(zip(printable, (chr(c) for c in codes)))


def read_bpe_text(path):
  """The text of bpe_simple_vocab_16e6.txt, from the .gz or from an open_clip_torch wheel."""
  path = pathlib.Path(path)
  if path.is_file() and path.suffix == '.gz':
    raw = path.read_bytes()
  else:
    folder = path if path.is_dir() else path.parent
    wheels = sorted(folder.glob('open_clip_torch-*.whl'))
    if not wheels:
      raise FileNotFoundError(
        f'no {path} and no open_clip_torch wheel in {folder}; run '
        f'`pip download --no-deps open_clip_torch -d {folder}`'
      )
    with zipfile.ZipFile(wheels[-1]) as wheel:
      raw = wheel.read('open_clip/bpe_simple_vocab_16e6.txt.gz')
  digest = hashlib.sha256(raw).hexdigest()
  if digest != BPE_SHA256:
    print(f'WARNING: bpe_simple_vocab_16e6.txt.gz has sha256 {digest}, expected {BPE_SHA256}')
  return gzip.decompress(raw).decode('utf-8')


def clip_merges(bpe_text, num_merges):
  """The first `num_merges` merges (pairs), skipping the file's version header line."""
  lines = bpe_text.split('\n')[1 : num_merges + 1]
  merges = [tuple(line.split()) for line in lines]
  assert len(merges) == num_merges and all(len(m) == 2 for m in merges)
  return merges


def clip_vocab(merges):
  """CLIP's vocabulary order: bytes, bytes + '</w>', merged pairs, then the two specials."""
  chars = list(bytes_to_unicode().values())
  vocab = chars + [c + '</w>' for c in chars] + [''.join(m) for m in merges]
  vocab += ['<|startoftext|>', '<|endoftext|>']
  assert len(vocab) == len(set(vocab)) == 512 + len(merges) + 2
  return {token: i for i, token in enumerate(vocab)}


def write_tokenizer(folder, vocab, merges, pad_token):
  """Write a diffusers tokenizer/ folder as real SD repos hold it, and load it back.

  Files: vocab.json, merges.txt ('#version: 0.2' then the merges), tokenizer_config.json (as
  CLIPTokenizer.save_pretrained writes it) and special_tokens_map.json. save_pretrained in
  transformers 5 writes tokenizer.json instead of vocab/merges; it is dropped, because real SD
  folders have none, and the folder is checked to load without it.
  """
  folder.mkdir(parents=True)
  (folder / 'vocab.json').write_text(json.dumps(vocab, ensure_ascii=False), encoding='utf-8')
  merges_text = '#version: 0.2\n' + '\n'.join(' '.join(m) for m in merges) + '\n'
  (folder / 'merges.txt').write_text(merges_text, encoding='utf-8')

  built = CLIPTokenizer(
    vocab=dict(vocab), merges=list(merges), pad_token=pad_token, model_max_length=MAX_LENGTH
  )
  scratch = folder / '_saved'
  built.save_pretrained(scratch)
  shutil.move(scratch / 'tokenizer_config.json', folder / 'tokenizer_config.json')
  shutil.rmtree(scratch)
  specials = {
    'bos_token': '<|startoftext|>',
    'eos_token': '<|endoftext|>',
    'pad_token': pad_token,
    'unk_token': '<|endoftext|>',
  }
  (folder / 'special_tokens_map.json').write_text(json.dumps(specials, indent=2) + '\n')

  loaded = CLIPTokenizer.from_pretrained(folder)
  assert loaded(PROMPTS).input_ids == built(PROMPTS).input_ids, 'tokenizer round trip'
  assert loaded.pad_token == pad_token and loaded.model_max_length == MAX_LENGTH
  assert len(loaded) == len(vocab)
  return loaded


# ----------------------------------------------------------------------------------------------
# Models with perturbed, rounded weights
# ----------------------------------------------------------------------------------------------


def build_unet(spec):
  """The tiny UNet2DConditionModel of a family (8x8x4 latents, three resolutions)."""
  return UNet2DConditionModel(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(8, 16, 16),
    down_block_types=('CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'),
    up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'),
    norm_num_groups=4,
    flip_sin_to_cos=True,
    freq_shift=0,
    **spec['unet'],
  )


def build_vae():
  """The tiny AutoencoderKL (32x32x3 images <-> 8x8x4 latents), one shape for both families."""
  return AutoencoderKL(
    in_channels=3,
    out_channels=3,
    down_block_types=('DownEncoderBlock2D',) * 3,
    up_block_types=('UpDecoderBlock2D',) * 3,
    block_out_channels=(8, 16, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    sample_size=32,
    scaling_factor=0.18215,
  )


def build_text_encoder(spec, tokenizer):
  """The tiny CLIPTextModel (3 layers, 4 heads, 77 positions) matching the tokenizer's ids."""
  config = CLIPTextConfig(
    vocab_size=len(tokenizer),
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=MAX_LENGTH,
    layer_norm_eps=1e-5,
    bos_token_id=tokenizer.bos_token_id,
    eos_token_id=tokenizer.eos_token_id,
    pad_token_id=tokenizer.pad_token_id,
    projection_dim=spec['text']['hidden_size'],
    **spec['text'],
  )
  return CLIPTextModel(config)


def build_scheduler(spec):
  """The family's scheduler with SD's scaled-linear training schedule, from its shipped config."""
  cls, extra = spec['scheduler']
  config = dict(
    beta_schedule='scaled_linear',
    trained_betas=None,
    steps_offset=1,
    set_alpha_to_one=False,
    clip_sample=False,
    **SCHEDULE,
    **extra,
  )
  return cls.from_config(config)


NORMS = (torch.nn.GroupNorm, torch.nn.LayerNorm)


def random_like(shape, kind, gen):
  """A float32 tensor drawn for one parameter.

  kind 'norm_scale': 1 + 0.2 N(0, 1); 'bias': 0.1 N(0, 1); 'embedding': 0.5 N(0, 1);
  'weight': N(0, 1 / fan_in) with fan_in the product of all but the first dimension.
  """
  z = torch.randn(shape, generator=gen, dtype=torch.float32)
  if kind == 'norm_scale':
    return 1.0 + 0.2 * z
  if kind == 'bias':
    return 0.1 * z
  if kind == 'embedding':
    return 0.5 * z
  fan_in = int(np.prod(shape[1:]))
  return z / fan_in**0.5


def perturb_(model, gen):
  """Overwrite every parameter so no layer is a no-op (no zero or identity initialisation)."""
  with torch.no_grad():
    for module in model.modules():
      for name, p in module.named_parameters(recurse=False):
        if isinstance(module, NORMS):
          kind = 'norm_scale' if name == 'weight' else 'bias'
        elif isinstance(module, torch.nn.Embedding):
          kind = 'embedding'
        elif p.ndim == 1:
          kind = 'bias'
        else:
          kind = 'weight'
        p.copy_(random_like(p.shape, kind, gen))


def round_to_storable(x, store_dtype):
  """Round float32 values to ones both the single file's dtype and the folder's dtype hold.

  float16: one rounding. bfloat16: round to bfloat16, then through float16 (whose subnormals are
  coarser than bfloat16 below 2**-14) and back to bfloat16, which leaves values exact in both.
  """
  if store_dtype == torch.float16:
    return x.half().float()
  return x.bfloat16().half().bfloat16().float()


def round_weights_(model, store_dtype):
  """Round every parameter in place and assert the result is exact in float16 (and bfloat16)."""
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(round_to_storable(p.data, store_dtype))
      assert torch.equal(p.half().float(), p), 'not float16-exact'
      if store_dtype == torch.bfloat16:
        assert torch.equal(p.bfloat16().float(), p), 'not bfloat16-exact'


def assert_no_trivial_parameters(model, name):
  """Fail if any parameter is all zeros or all ones (an untouched default initialisation)."""
  for key, p in model.named_parameters():
    assert not torch.all(p == 0) and not torch.all(p == 1), f'{name}.{key} is trivial'


def build_pipeline(spec, tokenizer):
  """The family's StableDiffusionPipeline with perturbed weights rounded to its stored dtype."""
  gen = torch.Generator().manual_seed(spec['seed'])
  unet, vae = build_unet(spec), build_vae()
  text_encoder = build_text_encoder(spec, tokenizer)
  for name, model in (('unet', unet), ('vae', vae), ('text_encoder', text_encoder)):
    perturb_(model, gen)
    round_weights_(model, spec['store_dtype'])
    assert_no_trivial_parameters(model, name)
    model.eval()
  return StableDiffusionPipeline(
    vae=vae,
    text_encoder=text_encoder,
    tokenizer=tokenizer,
    unet=unet,
    scheduler=build_scheduler(spec),
    safety_checker=None,
    feature_extractor=None,
    requires_safety_checker=False,
  )


def text_state_dict(text_encoder):
  """The text encoder's parameters named from 'embeddings.' (without any 'text_model.' prefix).

  transformers >= 5.6 flattened CLIPTextModel (no .text_model submodule); older versions, and
  every real SD repo and checkpoint, name the same tensors 'text_model.embeddings...'.
  """
  sd = text_encoder.state_dict()
  return {k.removeprefix('text_model.'): v for k, v in sd.items() if not k.endswith('position_ids')}


# ----------------------------------------------------------------------------------------------
# The diffusers folder
# ----------------------------------------------------------------------------------------------


def save_diffusers_folder(pipe, folder, dtype):
  """save_pretrained in `dtype`, with the text encoder's keys in the classic 'text_model.' names.

  The text encoder's model.safetensors is rewritten with the 'text_model.' prefix that real SD
  repos (and transformers < 5.6) use; transformers 5 loads both spellings.
  """
  saved = copy.deepcopy(pipe).to(dtype)
  saved.save_pretrained(folder, safe_serialization=True)
  path = folder / 'text_encoder' / 'model.safetensors'
  flat = safetensors.torch.load_file(path)
  classic = {'text_model.' + k.removeprefix('text_model.'): v for k, v in flat.items()}
  safetensors.torch.save_file(classic, path, metadata={'format': 'pt'})
  expected = {'model_index.json', 'unet', 'vae', 'text_encoder', 'tokenizer', 'scheduler'}
  assert {p.name for p in folder.iterdir()} == expected, sorted(p.name for p in folder.iterdir())


def load_diffusers_folder(folder):
  """The pipeline saved in `folder`, in float32 on CPU."""
  pipe = StableDiffusionPipeline.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
  pipe.set_progress_bar_config(disable=True)
  return pipe


# ----------------------------------------------------------------------------------------------
# The original LDM / CompVis single file
# ----------------------------------------------------------------------------------------------

UNET_RESNET = {
  'norm1': 'in_layers.0',
  'conv1': 'in_layers.2',
  'time_emb_proj': 'emb_layers.1',
  'norm2': 'out_layers.0',
  'conv2': 'out_layers.3',
  'conv_shortcut': 'skip_connection',
}


def unet_module_names(config):
  """diffusers U-Net module prefix -> LDM openaimodel prefix, and which prefixes are ResBlocks.

  LDM numbers input_blocks (conv_in, then per level `layers_per_block` ResBlock[+Transformer],
  then a Downsample except at the last level) and output_blocks (per level, highest first,
  `layers_per_block + 1` ResBlock[+Transformer], the last with an Upsample except at the end).
  """
  names = {
    'time_embedding.linear_1': 'time_embed.0',
    'time_embedding.linear_2': 'time_embed.2',
    'conv_in': 'input_blocks.0.0',
    'conv_norm_out': 'out.0',
    'conv_out': 'out.2',
    'mid_block.resnets.0': 'middle_block.0',
    'mid_block.attentions.0': 'middle_block.1',
    'mid_block.resnets.1': 'middle_block.2',
  }
  resnets = {'mid_block.resnets.0', 'mid_block.resnets.1'}
  levels, per = len(config.block_out_channels), config.layers_per_block
  k = 1
  for i, block in enumerate(config.down_block_types):
    for j in range(per):
      names[f'down_blocks.{i}.resnets.{j}'] = f'input_blocks.{k}.0'
      resnets.add(f'down_blocks.{i}.resnets.{j}')
      if block.startswith('CrossAttn'):
        names[f'down_blocks.{i}.attentions.{j}'] = f'input_blocks.{k}.1'
      k += 1
    if i < levels - 1:
      names[f'down_blocks.{i}.downsamplers.0.conv'] = f'input_blocks.{k}.0.op'
      k += 1
  k = 0
  for i, block in enumerate(config.up_block_types):
    attention = block.startswith('CrossAttn')
    for j in range(per + 1):
      names[f'up_blocks.{i}.resnets.{j}'] = f'output_blocks.{k}.0'
      resnets.add(f'up_blocks.{i}.resnets.{j}')
      if attention:
        names[f'up_blocks.{i}.attentions.{j}'] = f'output_blocks.{k}.1'
      if j == per and i < levels - 1:
        slot = 2 if attention else 1
        names[f'up_blocks.{i}.upsamplers.0.conv'] = f'output_blocks.{k}.{slot}.conv'
      k += 1
  return names, resnets


def split_module(key, names):
  """(longest module prefix of `key` found in `names`, the rest of the key)."""
  parts = key.split('.')
  for n in range(len(parts) - 1, 0, -1):
    prefix = '.'.join(parts[:n])
    if prefix in names:
      return prefix, '.'.join(parts[n:])
  raise KeyError(f'no LDM name for {key}')


def ldm_unet(unet):
  """The U-Net's tensors under 'model.diffusion_model.' LDM names (attention names unchanged)."""
  names, resnets = unet_module_names(unet.config)
  out = {}
  for key, value in unet.state_dict().items():
    module, rest = split_module(key, names)
    if module in resnets:
      first, _, tail = rest.partition('.')
      rest = f'{UNET_RESNET[first]}.{tail}'
    out[f'model.diffusion_model.{names[module]}.{rest}'] = value
  return out


VAE_ATTENTION = {
  'group_norm': 'norm',
  'to_q': 'q',
  'to_k': 'k',
  'to_v': 'v',
  'to_out.0': 'proj_out',
}


def vae_module_names(config):
  """diffusers AutoencoderKL module prefix -> LDM prefix (decoder.up.i counts from the top)."""
  levels = len(config.block_out_channels)
  names = {'quant_conv': 'quant_conv', 'post_quant_conv': 'post_quant_conv'}
  for part in ('encoder', 'decoder'):
    names[f'{part}.conv_in'] = f'{part}.conv_in'
    names[f'{part}.conv_out'] = f'{part}.conv_out'
    names[f'{part}.conv_norm_out'] = f'{part}.norm_out'
    names[f'{part}.mid_block.resnets.0'] = f'{part}.mid.block_1'
    names[f'{part}.mid_block.resnets.1'] = f'{part}.mid.block_2'
    for name, ldm_name in VAE_ATTENTION.items():
      names[f'{part}.mid_block.attentions.0.{name}'] = f'{part}.mid.attn_1.{ldm_name}'
  for i in range(levels):
    for j in range(config.layers_per_block):
      names[f'encoder.down_blocks.{i}.resnets.{j}'] = f'encoder.down.{i}.block.{j}'
    names[f'encoder.down_blocks.{i}.downsamplers.0.conv'] = f'encoder.down.{i}.downsample.conv'
    top = levels - 1 - i
    for j in range(config.layers_per_block + 1):
      names[f'decoder.up_blocks.{i}.resnets.{j}'] = f'decoder.up.{top}.block.{j}'
    names[f'decoder.up_blocks.{i}.upsamplers.0.conv'] = f'decoder.up.{top}.upsample.conv'
  return names


def ldm_vae(vae):
  """The VAE's tensors under 'first_stage_model.' names; mid-block attention as 1x1 convs."""
  names = vae_module_names(vae.config)
  out = {}
  for key, value in vae.state_dict().items():
    module, rest = split_module(key, names)
    rest = rest.replace('conv_shortcut', 'nin_shortcut')
    if '.mid.attn_1.' in names[module] and rest == 'weight' and value.ndim == 2:
      value = value[:, :, None, None]
    out[f'first_stage_model.{names[module]}.{rest}'] = value
  return out


def ldm_clip(text_encoder):
  """SD 1.x: HF CLIP names under 'cond_stage_model.transformer.text_model.', with position_ids."""
  prefix = 'cond_stage_model.transformer.text_model.'
  out = {prefix + k: v for k, v in text_state_dict(text_encoder).items()}
  out[prefix + 'embeddings.position_ids'] = torch.arange(MAX_LENGTH, dtype=torch.int64)[None]
  return out


OPEN_CLIP_LAYER = {
  'layer_norm1': 'ln_1',
  'layer_norm2': 'ln_2',
  'self_attn.out_proj': 'attn.out_proj',
  'mlp.fc1': 'mlp.c_fc',
  'mlp.fc2': 'mlp.c_proj',
}


def open_clip_extras(text_encoder, gen, store_dtype):
  """OpenCLIP tensors diffusers drops: one more resblock, text_projection (D, D), logit_scale."""
  cfg = text_encoder.config
  d, f = cfg.hidden_size, cfg.intermediate_size
  shapes = {
    'ln_1.weight': ((d,), 'norm_scale'),
    'ln_1.bias': ((d,), 'bias'),
    'attn.in_proj_weight': ((3 * d, d), 'weight'),
    'attn.in_proj_bias': ((3 * d,), 'bias'),
    'attn.out_proj.weight': ((d, d), 'weight'),
    'attn.out_proj.bias': ((d,), 'bias'),
    'ln_2.weight': ((d,), 'norm_scale'),
    'ln_2.bias': ((d,), 'bias'),
    'mlp.c_fc.weight': ((f, d), 'weight'),
    'mlp.c_fc.bias': ((f,), 'bias'),
    'mlp.c_proj.weight': ((d, f), 'weight'),
    'mlp.c_proj.bias': ((d,), 'bias'),
  }
  last = cfg.num_hidden_layers
  out = {
    f'transformer.resblocks.{last}.{name}': random_like(shape, kind, gen)
    for name, (shape, kind) in shapes.items()
  }
  out['text_projection'] = random_like((d, d), 'weight', gen)
  out['logit_scale'] = math.log(1 / 0.07) + 0.1 * torch.randn((), generator=gen)
  return {k: round_to_storable(v, store_dtype) for k, v in out.items()}


def ldm_open_clip(text_encoder, extras):
  """SD 2.x: OpenCLIP names under 'cond_stage_model.model.' (q, k, v fused into in_proj)."""
  sd = text_state_dict(text_encoder)
  out = {
    'token_embedding.weight': sd['embeddings.token_embedding.weight'],
    'positional_embedding': sd['embeddings.position_embedding.weight'],
    'ln_final.weight': sd['final_layer_norm.weight'],
    'ln_final.bias': sd['final_layer_norm.bias'],
  }
  for i in range(text_encoder.config.num_hidden_layers):
    hf, oc = f'encoder.layers.{i}.', f'transformer.resblocks.{i}.'
    for kind in ('weight', 'bias'):
      qkv = [sd[f'{hf}self_attn.{p}_proj.{kind}'] for p in 'qkv']
      out[f'{oc}attn.in_proj_{kind}'] = torch.cat(qkv, dim=0)
      for hf_name, oc_name in OPEN_CLIP_LAYER.items():
        out[f'{oc}{oc_name}.{kind}'] = sd[f'{hf}{hf_name}.{kind}']
  out.update(extras)
  return {'cond_stage_model.model.' + k: v for k, v in out.items()}


LDM_SCHEDULE_NAMES = (
  'betas',
  'alphas_cumprod',
  'alphas_cumprod_prev',
  'sqrt_alphas_cumprod',
  'sqrt_one_minus_alphas_cumprod',
  'log_one_minus_alphas_cumprod',
  'sqrt_recip_alphas_cumprod',
  'sqrt_recipm1_alphas_cumprod',
  'posterior_variance',
  'posterior_log_variance_clipped',
  'posterior_mean_coef1',
  'posterior_mean_coef2',
)


def ldm_schedule_buffers():
  """The DDPM buffers LDM checkpoints carry, from the scaled-linear ('linear' in LDM) betas.

  As ldm.models.diffusion.ddpm.DDPM.register_schedule (v_posterior = 0), in float64.
  """
  n, start, end = SCHEDULE['num_train_timesteps'], SCHEDULE['beta_start'], SCHEDULE['beta_end']
  betas = np.linspace(start**0.5, end**0.5, n, dtype=np.float64) ** 2
  alphas = 1.0 - betas
  ac = np.cumprod(alphas)
  ac_prev = np.append(1.0, ac[:-1])
  posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
  buffers = {
    'betas': betas,
    'alphas_cumprod': ac,
    'alphas_cumprod_prev': ac_prev,
    'sqrt_alphas_cumprod': np.sqrt(ac),
    'sqrt_one_minus_alphas_cumprod': np.sqrt(1.0 - ac),
    'log_one_minus_alphas_cumprod': np.log(1.0 - ac),
    'sqrt_recip_alphas_cumprod': np.sqrt(1.0 / ac),
    'sqrt_recipm1_alphas_cumprod': np.sqrt(1.0 / ac - 1.0),
    'posterior_variance': posterior_variance,
    'posterior_log_variance_clipped': np.log(np.maximum(posterior_variance, 1e-20)),
    'posterior_mean_coef1': betas * np.sqrt(ac_prev) / (1.0 - ac),
    'posterior_mean_coef2': (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
  }
  assert tuple(buffers) == LDM_SCHEDULE_NAMES
  return {k: torch.tensor(v, dtype=torch.float32) for k, v in buffers.items()}


def single_file_state_dict(family, pipe, extras):
  """The whole LDM state dict of a family, every float tensor in its stored dtype."""
  sd = {}
  sd.update(ldm_schedule_buffers())
  sd.update(ldm_unet(pipe.unet))
  sd.update(ldm_vae(pipe.vae))
  if family == 'sd1':
    sd.update(ldm_clip(pipe.text_encoder))
  else:
    sd.update(ldm_open_clip(pipe.text_encoder, extras))
  dtype = FAMILIES[family]['store_dtype']
  return {
    k: (v.to(dtype) if v.is_floating_point() else v).clone().contiguous() for k, v in sd.items()
  }


def write_single_file(family, sd, out):
  """sd1: torch.save({'state_dict', 'global_step': 0}) as .ckpt; sd2: safetensors."""
  if family == 'sd1':
    path = out / 'sd1_single.ckpt'
    torch.save({'state_dict': sd, 'global_step': 0}, path)
  else:
    path = out / 'sd2_single.safetensors'
    safetensors.torch.save_file(sd, path, metadata={'format': 'pt'})
  return path


# ----------------------------------------------------------------------------------------------
# Independent check of the single file through diffusers' converters
# ----------------------------------------------------------------------------------------------


def assert_same_tensors(name, got, want, allow_extra=(), float32=False):
  """Every tensor of `want` present in `got` with equal values (float32 comparison, exact).

  Keys of `got` not in `want` must be listed in `allow_extra`; with float32, every float
  tensor of `got` must be float32 (a model loaded with dtype=float32).
  """
  missing = sorted(set(want) - set(got))
  extra = sorted(set(got) - set(want) - set(allow_extra))
  assert not missing and not extra, f'{name}: missing {missing[:8]} extra {extra[:8]}'
  for key, value in want.items():
    g = got[key]
    assert g.device.type != 'meta', f'{name}.{key} was never loaded'
    assert not g.is_floating_point() or g.dtype == torch.float32 or not float32, f'{name}.{key}'
    assert g.shape == value.shape, f'{name}.{key}: {tuple(g.shape)} != {tuple(value.shape)}'
    assert torch.equal(g.float(), value.float()), f'{name}.{key} differs'


def model_tensors(model):
  """A model's state dict without position_ids buffers, keys without 'text_model.'."""
  return {
    k.removeprefix('text_model.'): v
    for k, v in model.state_dict().items()
    if not k.endswith('position_ids')
  }


def public_config(obj):
  """A model's or scheduler's config as a dict, without dtype and private ('_...') entries."""
  config = obj.config.to_dict() if hasattr(obj.config, 'to_dict') else dict(obj.config)
  return {k: v for k, v in config.items() if not k.startswith('_') and k != 'dtype'}


def verify_from_single_file(path, folder, reference):
  """Route 1: StableDiffusionPipeline.from_single_file(path, config=folder) equals the folder."""
  loaded = StableDiffusionPipeline.from_single_file(
    str(path), config=str(folder), local_files_only=True, dtype=torch.float32
  )
  for name in ('unet', 'vae', 'text_encoder'):
    assert_same_tensors(
      f'from_single_file {name}',
      model_tensors(getattr(loaded, name)),
      model_tensors(getattr(reference, name)),
      float32=True,
    )
    got, want = public_config(getattr(loaded, name)), public_config(getattr(reference, name))
    assert got == want, f'from_single_file {name} config: {got} != {want}'
  assert public_config(loaded.scheduler) == public_config(reference.scheduler)
  assert loaded.tokenizer(PROMPTS).input_ids == reference.tokenizer(PROMPTS).input_ids
  pos = getattr(loaded.text_encoder, 'text_model', loaded.text_encoder).embeddings.position_ids
  assert torch.equal(pos.long().flatten(), torch.arange(MAX_LENGTH)), 'position_ids'


def verify_converters(family, path, reference):
  """Route 2: the single_file_utils converters one by one, key sets checked explicitly.

  Returns the converted keys that the diffusers models do not have (reported, not loaded).
  """
  ckpt = single_file_utils.load_single_file_checkpoint(str(path), local_files_only=True)
  unet = single_file_utils.convert_ldm_unet_checkpoint(ckpt, dict(reference.unet.config))
  assert_same_tensors('convert_ldm_unet_checkpoint', unet, model_tensors(reference.unet))
  vae = single_file_utils.convert_ldm_vae_checkpoint(ckpt, dict(reference.vae.config))
  assert_same_tensors('convert_ldm_vae_checkpoint', vae, model_tensors(reference.vae))
  want = model_tensors(reference.text_encoder)
  if family == 'sd1':
    text = single_file_utils.convert_ldm_clip_checkpoint(ckpt)
    text = {k.removeprefix('text_model.'): v for k, v in text.items()}
    extra = [k for k in text if k.endswith('position_ids')]
    assert torch.equal(text.pop(extra[0]).long().flatten(), torch.arange(MAX_LENGTH))
  else:
    text = single_file_utils.convert_open_clip_checkpoint(reference.text_encoder, ckpt)
    text = {k.removeprefix('text_model.'): v for k, v in text.items()}
    last = reference.text_encoder.config.num_hidden_layers
    extra = sorted(k for k in text if k.startswith(f'encoder.layers.{last}.'))
  assert_same_tensors('convert text encoder', text, want, allow_extra=extra)
  return sorted(extra)


def verify_schedule_buffers(path, scheduler, store_dtype):
  """The single file's betas and alphas_cumprod agree with diffusers' own scaled-linear schedule.

  diffusers computes in float32, the buffers in float64 then rounded to the stored dtype, so
  they agree to that dtype's precision (relative 2**-8 for bfloat16, 2**-11 for float16).
  """
  ckpt = single_file_utils.load_single_file_checkpoint(str(path), local_files_only=True)
  for name in LDM_SCHEDULE_NAMES:
    assert ckpt[name].shape == (SCHEDULE['num_train_timesteps'],), name
    assert ckpt[name].dtype == store_dtype, name
  rtol = 2.0**-8 if store_dtype == torch.bfloat16 else 2.0**-11
  for name, want in (('betas', scheduler.betas), ('alphas_cumprod', scheduler.alphas_cumprod)):
    torch.testing.assert_close(ckpt[name].float(), want.float(), rtol=rtol, atol=0)


# ----------------------------------------------------------------------------------------------
# Reference outputs
# ----------------------------------------------------------------------------------------------


def nhwc(x):
  """torch NCHW -> numpy NHWC float32."""
  return x.detach().permute(0, 2, 3, 1).contiguous().numpy().astype(np.float32)


def nchw(x):
  """numpy NHWC -> torch NCHW float32."""
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).float()


def text_references(pipe):
  """Token ids and the text encoder's last and penultimate hidden states for PROMPTS."""
  ids = pipe.tokenizer(
    PROMPTS, padding='max_length', max_length=MAX_LENGTH, truncation=True
  ).input_ids
  ids = torch.tensor(ids, dtype=torch.int64)
  full = pipe.tokenizer(PROMPTS).input_ids
  assert max(len(t) for t in full) > MAX_LENGTH, 'no prompt is long enough to be truncated'
  out = pipe.text_encoder(ids, output_hidden_states=True)
  assert len(out.hidden_states) == pipe.text_encoder.config.num_hidden_layers + 1
  return {
    'token_ids': ids.numpy().astype(np.int32),
    'text_hidden': out.last_hidden_state.numpy(),
    'text_penultimate': out.hidden_states[-2].numpy(),
  }


def unet_references(pipe, rng):
  """U-Net noise predictions on random latents and contexts at t = 1, 500, 999."""
  latents = rng.standard_normal((3, 8, 8, 4)).astype(np.float32)
  timesteps = np.array([1, 500, 999], dtype=np.int32)
  context = rng.standard_normal((3, MAX_LENGTH, pipe.unet.config.cross_attention_dim))
  context = context.astype(np.float32)
  out = pipe.unet(
    nchw(latents),
    torch.from_numpy(timesteps).long(),
    encoder_hidden_states=torch.from_numpy(context),
  ).sample
  return {
    'unet_latents': latents,
    'unet_timesteps': timesteps,
    'unet_context': context,
    'unet_output': nhwc(out),
  }


def vae_references(pipe, rng):
  """Posterior mean / std of random images and decodings of random (unscaled) latents."""
  images = rng.uniform(-1.0, 1.0, (2, 32, 32, 3)).astype(np.float32)
  posterior = pipe.vae.encode(nchw(images)).latent_dist
  z = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
  decoded = pipe.vae.decode(nchw(z)).sample
  return {
    'vae_images': images,
    'vae_mean': nhwc(posterior.mean),
    'vae_std': nhwc(posterior.std),
    'vae_decode_latents': z,
    'vae_decoded': nhwc(decoded),
  }


def e2e_scheduler(pipe):
  """DDIM from the pipeline's scheduler config, checked to keep SD's inference settings."""
  scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
  c = scheduler.config
  assert c.steps_offset == 1 and c.set_alpha_to_one is False and c.clip_sample is False
  assert c.timestep_spacing == 'leading' and c.beta_schedule == 'scaled_linear'
  return scheduler


def e2e_references(pipe, rng):
  """A 10-step DDIM (eta 0) run with classifier-free guidance from fixed initial latents."""
  init = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
  pipe.scheduler = e2e_scheduler(pipe)
  args = dict(
    prompt=E2E['prompt'],
    negative_prompt=E2E['negative_prompt'],
    num_inference_steps=E2E['num_inference_steps'],
    guidance_scale=E2E['guidance_scale'],
    height=E2E['height'],
    width=E2E['width'],
    eta=E2E['eta'],
  )
  final = pipe(**args, latents=nchw(init), output_type='latent').images
  images = pipe(**args, latents=nchw(init), output_type='np').images
  decoded = pipe.vae.decode(final / pipe.vae.config.scaling_factor).sample
  recomputed = (decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(recomputed, images, atol=1e-6)
  img2img = img2img_references(pipe, rng, args)
  return {
    **img2img,
    'e2e_init_latents': init,
    'e2e_final_latents': nhwc(final),
    'e2e_timesteps': pipe.scheduler.timesteps.numpy().astype(np.int32),
    'e2e_images': images.astype(np.float32),
  }


def img2img_references(pipe, rng, args):
  """diffusers' img2img (the same DDIM, prompts and guidance; strength E2E["img2img_strength"])
  from given clean latents: passed as the pipeline's 4-channel `image`, they are used as they
  are, and noised with the first draw of its generator, which is recorded by drawing it again
  from an identically seeded generator."""
  clean = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
  img2img = StableDiffusionImg2ImgPipeline(**pipe.components)
  img2img.scheduler = e2e_scheduler(pipe)
  seed = E2E['img2img_seed']
  kept = dict(args)
  del kept['height'], kept['width']
  images = img2img(
    **kept,
    image=nchw(clean),
    strength=E2E['img2img_strength'],
    generator=torch.Generator().manual_seed(seed),
    output_type='np',
  ).images
  noise = diffusers.utils.torch_utils.randn_tensor(
    (2, 4, 8, 8), generator=torch.Generator().manual_seed(seed), dtype=torch.float32
  )
  return {
    'img2img_clean_latents': clean,
    'img2img_noise': nhwc(noise),
    'img2img_timesteps': img2img.scheduler.timesteps.numpy().astype(np.int32),
    'img2img_images': images.astype(np.float32),
  }


def check_arrays(family, arrays, limit=100.0):
  """Every array finite, every float array of moderate size; prints max |.| of each."""
  for key, value in arrays.items():
    assert np.all(np.isfinite(value)), f'{family}.{key} is not finite'
    peak = float(np.max(np.abs(value))) if value.size else 0.0
    shape = str(value.shape)
    print(f'  {family}.{key:20s} {str(value.dtype):8s} {shape:16s} max|.| {peak:.4g}')
    if value.dtype.kind == 'f' and not key.endswith('images'):
      assert peak < limit, f'{family}.{key}: max |.| {peak} >= {limit}'
  assert arrays['e2e_images'].min() >= 0.0 and arrays['e2e_images'].max() <= 1.0


def reference_arrays(family, pipe):
  """All reference arrays of a family, computed in float32 on CPU with fixed seeds."""
  rng = np.random.default_rng(FAMILIES[family]['seed'] + 100)
  torch.manual_seed(0)
  arrays = {}
  with torch.no_grad():
    arrays.update(text_references(pipe))
    arrays.update(unet_references(pipe, rng))
    arrays.update(vae_references(pipe, rng))
    arrays.update(e2e_references(pipe, rng))
  check_arrays(family, arrays)
  return arrays


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


def write_npz(path, arrays):
  """np.savez_compressed, byte for byte reproducible (fixed zip entry dates)."""
  with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_DEFLATED) as archive:
    for key, value in arrays.items():
      buffer = io.BytesIO()
      np.lib.format.write_array(buffer, np.ascontiguousarray(value), allow_pickle=False)
      info = zipfile.ZipInfo(f'{key}.npy', date_time=(1980, 1, 1, 0, 0, 0))
      info.compress_type = zipfile.ZIP_DEFLATED
      archive.writestr(info, buffer.getvalue())


def make_family(family, vocab, merges, out):
  """Everything for one family: folder, single file, both verifications, reference outputs."""
  spec = FAMILIES[family]
  print(f'[{family}] building')
  scratch = out / f'_{family}_tokenizer'
  tokenizer = write_tokenizer(scratch, vocab, merges, spec['pad_token'])
  pipe = build_pipeline(spec, tokenizer)

  folder = out / f'{family}_diffusers'
  save_diffusers_folder(pipe, folder, spec['folder_dtype'])
  shutil.rmtree(folder / 'tokenizer')
  shutil.move(scratch, folder / 'tokenizer')
  reference = load_diffusers_folder(folder)
  for name in ('unet', 'vae', 'text_encoder'):
    got, want = model_tensors(getattr(reference, name)), model_tensors(getattr(pipe, name))
    assert_same_tensors(f'folder round trip {name}', got, want, float32=True)

  extras = None
  if family == 'sd2':
    gen = torch.Generator().manual_seed(spec['seed'] + 1000)
    extras = open_clip_extras(pipe.text_encoder, gen, spec['store_dtype'])
  path = write_single_file(family, single_file_state_dict(family, pipe, extras), out)

  print(f'[{family}] verifying {path.name} with StableDiffusionPipeline.from_single_file')
  verify_from_single_file(path, folder, reference)
  print(f'[{family}] verifying {path.name} with the single_file_utils converters')
  ignored = verify_converters(family, path, reference)
  verify_schedule_buffers(path, reference.scheduler, spec['store_dtype'])
  print(f'[{family}] single file OK; converter keys not in the diffusers model: {ignored}')

  print(f'[{family}] reference outputs')
  arrays = reference_arrays(family, reference)
  write_npz(out / f'{family}_reference.npz', arrays)
  config = dict(e2e_scheduler(reference).config)
  config = {k: v for k, v in config.items() if k == '_class_name' or not k.startswith('_')}
  e2e = dict(E2E, scheduler_config=config)
  (out / f'{family}_e2e.json').write_text(json.dumps(e2e, indent=2, default=list) + '\n')


def print_sizes(out):
  """Print every file's size and the total, and fail if the total is over SIZE_LIMIT."""
  total = 0
  for path in sorted(p for p in out.rglob('*') if p.is_file()):
    size = path.stat().st_size
    total += size
    print(f'  {size:10d}  {path.relative_to(out)}')
  print(f'  {total:10d}  total ({total / 1e6:.2f} MB; limit {SIZE_LIMIT / 1e6:.1f} MB)')
  assert total < SIZE_LIMIT, 'fixtures too large'


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', required=True, type=pathlib.Path, help='e.g. tests/data/sd')
  parser.add_argument(
    '--bpe',
    default=BPE_DEFAULT,
    type=pathlib.Path,
    help='bpe_simple_vocab_16e6.txt.gz, or a folder holding the open_clip_torch wheel',
  )
  args = parser.parse_args()
  if not __debug__:
    raise SystemExit('run without -O: the checks in this script are asserts')
  versions = (torch.__version__, diffusers.__version__, transformers.__version__)
  print('torch %s, diffusers %s, transformers %s' % versions)
  torch.set_num_threads(1)  # one fixed reduction order for the reference outputs
  if args.out.exists():
    if any(args.out.iterdir()) and not (args.out / 'prompts.json').exists():
      raise SystemExit(f'{args.out} is not empty and holds no fixtures; not erasing it')
    shutil.rmtree(args.out)
  args.out.mkdir(parents=True)

  merges = clip_merges(read_bpe_text(args.bpe), NUM_MERGES)
  vocab = clip_vocab(merges)
  (args.out / 'prompts.json').write_text(json.dumps(PROMPTS, indent=2, ensure_ascii=False) + '\n')
  for family in FAMILIES:
    make_family(family, vocab, merges, args.out)
  print_sizes(args.out)


if __name__ == '__main__':
  main()
