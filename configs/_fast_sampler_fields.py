"""The config.sampling fields of the fast samplers and guidance, shared by every default config."""
from ml_collections.config_dict import placeholder


def add_fast_sampler_fields(sampling) -> None:
  """Adds the fields of methods 'ddim', 'dpm_solver', 'edm', 'ddim_diffusers' and
  'consistency' and of classifier-free guidance."""
  sampling.steps = placeholder(int)  # number of steps; or set sampling.nfe instead
  sampling.nfe = placeholder(int)  # budget of score evaluations
  sampling.time_schedule = placeholder(str)  # None: the sampler's own default
  sampling.eta = 0.0  # DDIM
  sampling.timestep_spacing = 'leading'  # 'ddim_diffusers': Stable Diffusion's scheduler config
  sampling.steps_offset = 1
  sampling.set_alpha_to_one = False
  sampling.dpm_solver_variant = '2M'  # '2M' | '3M' | '2S' | '3S'
  sampling.rho = 7.0  # EDM's schedule exponent (time_schedule 'rho')
  sampling.s_churn = 0.0  # EDM churn
  sampling.s_min = 0.0
  sampling.s_max = placeholder(float)  # None: no upper limit
  sampling.s_noise = 1.0
  sampling.guidance_scale = placeholder(float)  # class-conditional models; None: no guidance
  sampling.consistency_levels = ()  # 'consistency': EDM levels after the first step; (): 1 step
  sampling.consistency_sigma_min = 0.002  # 'consistency': where the consistency function is x
