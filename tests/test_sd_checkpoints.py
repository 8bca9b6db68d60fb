"""Stable Diffusion checkpoint reading: architectures from configs and presets (parameter counts of
the published models), the tokenizer's file formats, and the errors for wrong or missing files."""
import gzip
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import sd_checkpoints, sd_single_file, stable_diffusion, tensor_files
from score_sde.models import autoencoder, clip_text, clip_tokenizer, unet_ldm

DATA = os.path.join(os.path.dirname(__file__), 'data', 'sd')
SD1_FOLDER = os.path.join(DATA, 'sd1_diffusers')


def count(shapes) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes))


def preset_counts(architecture):
  a = architecture
  unet = sd_checkpoints.param_shapes(unet_ldm.UNet(a.unet), jnp.zeros((1, 8, 8, 4)),
                                     jnp.zeros((1,)), jnp.zeros((1, 1, a.unet.context_dim)))
  vae = sd_checkpoints.param_shapes(autoencoder.AutoencoderKL(a.vae), jnp.zeros((1, 8, 8, 3)))
  text = sd_checkpoints.param_shapes(clip_text.CLIPTextTransformer(a.text),
                                     jnp.zeros((1, 1), jnp.int32))
  return count(unet), count(vae), count(text)


def test_presets_have_the_published_parameter_counts():
  # Stable Diffusion 1.5: U-Net 859.52M, VAE 83.65M, CLIP ViT-L/14 text encoder 123.06M; 2.x:
  # U-Net 865.91M and OpenCLIP ViT-H/14's text tower without its last layer 340.39M (the sizes
  # of the diffusers models of runwayml/stable-diffusion-v1-5 and stabilityai/stable-diffusion-2-1).
  assert preset_counts(sd_checkpoints.PRESETS['sd1']) == (859_520_964, 83_653_863, 123_060_480)
  assert preset_counts(sd_checkpoints.PRESETS['sd2']) == (865_910_724, 83_653_863, 340_387_840)


def test_openai_merges_file_builds_the_same_vocabulary(tmp_path):
  # OpenAI's bpe_simple_vocab_16e6.txt.gz holds a header line and the merges; the vocabulary is
  # derived from them. The fixture's vocab.json was written by the fixture script from the same
  # merges: both must agree token for token.
  with open(os.path.join(SD1_FOLDER, 'tokenizer', 'merges.txt'), encoding='utf-8') as f:
    merges = [line for line in f.read().split('\n') if line and not line.startswith('#')]
  path = str(tmp_path / 'bpe_simple_vocab_16e6.txt.gz')
  with gzip.open(path, 'wt', encoding='utf-8') as f:
    f.write('"bpe_simple_vocab_16e6.txt#version: 0.2\n' + '\n'.join(merges) + '\n')
  from_gz = clip_tokenizer.CLIPTokenizer.from_files(path)
  from_folder = clip_tokenizer.CLIPTokenizer.from_files(os.path.join(SD1_FOLDER, 'tokenizer'))
  assert from_gz.vocab == from_folder.vocab
  prompts = ['a photograph of an astronaut riding a horse', "it's 3.14!"]
  np.testing.assert_array_equal(from_gz.tokenize(prompts), from_folder.tokenize(prompts))


def test_tokenizer_truncates_and_pads():
  tokenizer = clip_tokenizer.CLIPTokenizer.from_files(os.path.join(SD1_FOLDER, 'tokenizer'))
  ids = tokenizer.tokenize(['a ' * 100, 'a'])
  assert ids.shape == (2, 77) and ids.dtype == np.int32
  assert ids[0, 0] == tokenizer.start_id and ids[0, 76] == tokenizer.end_id
  assert list(ids[1, :3]) == [tokenizer.start_id, tokenizer.vocab['a</w>'], tokenizer.end_id]
  assert (ids[1, 3:] == tokenizer.pad_id).all()
  with pytest.raises(TypeError, match='a list of prompts'):
    tokenizer.tokenize('a')


def test_missing_tokenizer_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"lacks \['vocab.json', 'merges.txt'\]"):
    clip_tokenizer.CLIPTokenizer.from_files(str(tmp_path))


def copy_folder(tmp_path) -> str:
  folder = str(tmp_path / 'sd1')
  shutil.copytree(SD1_FOLDER, folder)
  return folder


def test_missing_component_file_is_named(tmp_path):
  folder = copy_folder(tmp_path)
  os.remove(os.path.join(folder, 'vae', 'config.json'))
  with pytest.raises(FileNotFoundError, match=r'vae/config.json is missing: expected the vae '
                                              r'config'):
    stable_diffusion.load_pipeline(folder)
  folder = copy_folder(tmp_path / 'b')
  os.remove(os.path.join(folder, 'unet', 'diffusion_pytorch_model.safetensors'))
  with pytest.raises(FileNotFoundError, match=r'unet holds no weights: expected a .safetensors'):
    stable_diffusion.load_pipeline(folder)


def test_every_mismatched_tensor_is_reported_by_name(tmp_path):
  path = str(tmp_path / 'model.ckpt')
  stored = tensor_files.read_torch_file(os.path.join(DATA, 'sd1_single.ckpt'))['state_dict']
  stored = {k: np.asarray(v) for k, v in stored.items()}
  del stored['model.diffusion_model.out.2.bias']
  stored['first_stage_model.quant_conv.weight'] = np.zeros((8, 8, 3, 3), np.float16)
  stored['model.diffusion_model.extra.weight'] = np.zeros((2,), np.float16)
  tensors = sd_single_file.split_single_file(
      stored, sd_checkpoints.folder_architecture(SD1_FOLDER), path)
  with pytest.raises(ValueError) as error:
    sd_checkpoints.network_params(sd_checkpoints.folder_architecture(SD1_FOLDER), *tensors,
                                    jnp.float32, path)
  message = str(error.value)
  assert 'missing conv_out/bias, shape (4,)' in message
  assert 'unexpected extra/scale (from model.diffusion_model.extra.weight)' in message
  assert ('wrong shape quant_conv/kernel (from first_stage_model.quant_conv.weight): stored '
          '(3, 3, 8, 8), model (1, 1, 8, 8)') in message


def test_unsupported_unet_settings_are_listed_together():
  with open(os.path.join(SD1_FOLDER, 'unet', 'config.json')) as f:
    config = json.load(f)
  config.update(addition_embed_type='text_time', resnet_time_scale_shift='scale_shift',
                up_block_types=['UpBlock2D'] * 3)
  with pytest.raises(ValueError) as error:
    sd_checkpoints.unet_config(config, 'unet/config.json')
  message = str(error.value)
  for expected in ("addition_embed_type = 'text_time' is not supported",
                   "resnet_time_scale_shift = 'scale_shift' is not supported",
                   'up_block_types', 'must mirror the down blocks'):
    assert expected in message


def test_single_file_needs_a_tokenizer_and_a_matching_preset():
  path = os.path.join(DATA, 'sd1_single.ckpt')
  with pytest.raises(ValueError, match='holds no tokenizer: pass tokenizer='):
    stable_diffusion._tokenizer(None, None, '<|endoftext|>', path)
  with pytest.raises(ValueError, match="holds an sd1 text encoder; architecture = 'sd2' is an sd2 "
                                       'preset'):
    stable_diffusion._single_file_architecture('sd2', 'sd1', path)
  stored = sd_checkpoints.read_weight_file(os.path.join(DATA, 'sd2_single.safetensors'))
  assert sd_single_file.family_of(stored) == 'sd2'
  with pytest.raises(ValueError, match='no model.diffusion_model'):
    sd_single_file.family_of({'first_stage_model.conv_in.weight': np.zeros(1)})


def test_schedule_buffers_must_match_the_architecture():
  stored = dict(sd_checkpoints.read_weight_file(os.path.join(DATA, 'sd1_single.ckpt')))
  architecture = sd_checkpoints.folder_architecture(SD1_FOLDER)
  stored['betas'] = np.linspace(1e-4, 0.02, 1000)
  with pytest.raises(ValueError, match='its betas'):
    sd_single_file.split_single_file(stored, architecture, 'f.ckpt')
