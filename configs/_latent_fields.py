"""The config.latent fields of a latent score run (score_sde/latent_runs.py)."""
import ml_collections
from ml_collections.config_dict import placeholder


def add_latent_fields(config) -> None:
  """Adds config.latent: the autoencoder (a workdir or a Stable Diffusion checkpoint, required),
  the scale factor (None: estimated on the first start and recorded) and posterior sampling."""
  config.latent = latent = ml_collections.ConfigDict()
  latent.autoencoder = placeholder(str)
  latent.scale_factor = placeholder(float)
  latent.sample_posterior = True
