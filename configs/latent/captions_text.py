"""A tiny text-conditional latent model of single captioned digits ('a handwritten seven'): the
demo's cross-attention U-Net (configs/latent/pairs_text.py) at half width, 400 steps on the
latents of configs/latent/captions_autoencoder.py, a few minutes on a CPU; captions dropped 20%
of the time for guidance, which --mode eval applies at scale 3 (the fraction of samples showing
their caption's digit is reported as digit_accuracy; chance 10%).
"""
from configs.latent.pairs_text import get_config as pairs_text


def get_config():
  config = pairs_text()
  config.data.update(dataset='digit_captions', image_size=8)
  config.training.update(n_iters=400, snapshot_freq=400, snapshot_freq_for_preemption=400,
                         eval_freq=400, label_dropout=0.2, log_freq=100)
  config.model.update(nf=32, context_dim=32, context_length=3, ema_rate=0.99)
  config.optim.lr = 2e-3
  config.sampling.update(steps=10, guidance_scale=3.0)
  config.eval.update(begin_ckpt=1, end_ckpt=1, num_samples=200, batch_size=100)
  return config
