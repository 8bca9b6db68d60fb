"""VP SDE (continuous DSM) on the checkerboard with an MLP: the demo config."""
from configs.default_toy_configs import get_default_configs


def get_config():
  config = get_default_configs()
  config.training.sde = 'vpsde'
  config.model.embedding_type = 'positional'
  return config
