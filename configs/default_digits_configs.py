"""Defaults of the digits configs: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 1
channel, no download; every tenth image held out as the test split), small NCSN++ / DDPM++
networks trained on 2 CPU cores in about ten minutes, then evaluated on the final checkpoint:
test loss, bits/dim of the whole test split and 64 samples.

The CIFAR-10 defaults with these changes: batch 64, 2,400 steps, one step per compiled call (on
CPU a scan of convolution steps runs about 10x slower), a faster learning rate and EMA, 8x8x1
data, and a network of width 32 with two resolutions (8 and 4 pixels).
"""
from ml_collections.config_dict import placeholder

from configs.default_cifar10_configs import get_default_configs as get_cifar10_defaults


def get_default_configs():
  config = get_cifar10_defaults()
  config.training.update(batch_size=64, n_iters=2400, n_jitted_steps=1, snapshot_freq=800,
                         snapshot_freq_for_preemption=200, log_freq=100, eval_freq=500,
                         snapshot_sampling=False)
  config.eval.update(begin_ckpt=3, end_ckpt=3, batch_size=64, num_samples=64, enable_loss=True,
                     enable_bpd=True, enable_sampling=True, bpd_num_repeats=1)
  config.eval.bpd_num_samples = placeholder(int)  # None: the whole test split
  config.data.update(dataset='digits', image_size=8, num_channels=1, random_flip=False)
  config.model.update(nf=32, ch_mult=(1, 2), num_res_blocks=2, attn_resolutions=(4,),
                      dropout=0.0, ema_rate=0.999)
  config.optim.update(lr=1e-3, warmup=100)
  return config
