"""Small configs for fast tests."""
from configs.default_toy_configs import get_default_configs


def tiny_config(sde: str = 'vpsde'):
  """The toy config with a tiny MLP, 50 noise scales and a 20-step run."""
  config = get_default_configs()
  config.training.update(sde=sde, batch_size=64, n_iters=20, n_jitted_steps=5, log_freq=5,
                         eval_freq=10, snapshot_freq=10, snapshot_sampling=False)
  config.model.update(nf=16, num_layers=2, num_scales=50)
  if sde == 'vesde':
    config.model.update(embedding_type='fourier', scale_by_sigma=True)
  config.eval.update(num_samples=256, batch_size=128)
  config.optim.warmup = 5
  return config
