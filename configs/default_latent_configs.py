"""Defaults of the Stable Diffusion configs (configs/latent/): text-to-image with a checkpoint
read by score_sde.stable_diffusion, through `score-sde --mode generate`."""
import ml_collections
from ml_collections.config_dict import placeholder

from configs import _fast_sampler_fields as fast_sampler_fields


def get_default_configs():
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.latent = latent = ml_collections.ConfigDict()
  latent.checkpoint = placeholder(str)  # a diffusers folder or a .safetensors / .ckpt file
  latent.architecture = placeholder(str)  # single files: 'sd1' | 'sd2' | 'sd2-base' | a folder
  latent.tokenizer = placeholder(str)  # single files: a tokenizer folder or OpenAI's merges
  latent.prediction_type = placeholder(str)  # None: the checkpoint's (or preset's)
  latent.dtype = placeholder(str)  # None: 'bfloat16' on accelerators, 'float32' on CPU
  latent.timesteps = 'discrete'  # 'continuous': smooth score for the ODE and the likelihood

  config.generate = generate = ml_collections.ConfigDict()
  generate.negative_prompt = ''
  generate.num_images = 1  # per prompt
  generate.batch_size = 1
  generate.height = 512
  generate.width = 512

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.method = 'ddim_diffusers'  # or any registered sampler
  sampling.predictor = 'reverse_diffusion'  # method 'pc'
  sampling.corrector = 'none'
  sampling.snr = 0.16
  sampling.n_steps_each = 1
  sampling.step_size_rule = 'batch'
  sampling.probability_flow = False
  sampling.noise_removal = True
  sampling.eps = 1e-3
  sampling.ode_solver = 'dopri5'  # method 'ode'
  sampling.rtol = 1e-3
  sampling.atol = 1e-3
  sampling.ode_steps = placeholder(int)  # 'euler' / 'heun'
  fast_sampler_fields.add_fast_sampler_fields(sampling)
  sampling.steps = 50
  sampling.guidance_scale = 7.5  # classifier-free guidance against the negative prompt
  return config
