"""The text-conditional latent model of the compositional-digits demo: a small LDM U-Net with
cross-attention over a caption encoder trained with it (as LDM's text-to-image models trained
theirs), on the 4 x 4 x 4 latents of configs/latent/pairs_autoencoder.py, VP SDE, continuous
DSM loss, captions dropped 10% of the time for classifier-free guidance. Captions name two digits
and their order ('three left of eight', 'eight right of three'); the model follows them only by
attending to which word names which side, which it learns late (after about 4,000 steps; the
EMA at 0.99 follows within a few hundred). 4,500 steps, 13-16 minutes on a 2-core CPU:

  score-sde --config configs/latent/pairs_text.py --workdir runs/pairs_text \
      --config.latent.autoencoder=runs/pairs_ae
  score-sde --config configs/latent/pairs_text.py --workdir runs/pairs_text \
      --config.latent.autoencoder=runs/pairs_ae --mode eval --config.sampling.guidance_scale=3

--mode eval draws eval.num_samples samples for the test captions and reports FD-digits of their
halves and the caption accuracy (both digits as named; chance 1%).
"""
from ml_collections.config_dict import placeholder

from configs import _latent_fields as latent_fields
from configs.digits.ddpmpp_vp import get_config as get_digits_config
from score_sde import captions


def get_config():
  config = get_digits_config()
  latent_fields.add_latent_fields(config)
  config.data.update(dataset='digit_pairs', image_size=16)
  config.training.update(n_iters=4500, snapshot_freq=500, snapshot_freq_for_preemption=500,
                         eval_freq=500, label_dropout=0.1)
  config.model.update(name='ldm_unet', nf=64, ch_mult=(1, 2), num_res_blocks=1,
                      attn_resolutions=(4, 2), scale_by_sigma=False, ema_rate=0.99)
  config.model.conditioning = 'text'
  config.model.head_dim = 32
  config.model.context_dim = 64
  config.model.context_length = 4
  config.model.vocabulary = captions.DIGIT_VOCABULARY
  config.model.text_layers = 2
  config.model.text_heads = 4
  config.model.text_encoder = placeholder(str)
  config.sampling.update(method='dpm_solver', steps=20, guidance_scale=1.0)
  config.eval.update(begin_ckpt=9, end_ckpt=9, num_samples=500, batch_size=250, enable_bpd=False)
  return config
