"""NCSN++ (VE SDE, continuous) on the bundled 8x8 digits: the CIFAR-10 NCSN++ cont. recipe (Song
et al. 2021, Table 3) at digit size. sigma_max = 10 exceeds the largest distance between two
digits in [0, 1]^64 (8), as Song & Ermon (2020) recommend."""
from configs.default_digits_configs import get_default_configs


def get_config():
  config = get_default_configs()
  config.training.update(sde='vesde', continuous=True, reduce_mean=False)
  config.sampling.update(method='pc', predictor='reverse_diffusion', corrector='langevin',
                         snr=0.16, eps=1e-5)
  config.data.centered = False
  config.model.update(name='ncsnpp', sigma_min=0.01, sigma_max=10.0, scale_by_sigma=True,
                      normalization='GroupNorm', nonlinearity='swish', resamp_with_conv=True,
                      conditional=True, fir=True, fir_kernel=[1, 3, 3, 1], skip_rescale=True,
                      resblock_type='biggan', progressive='output_skip',
                      progressive_input='input_skip', progressive_combine='sum',
                      attention_type='ddpm', embedding_type='fourier', fourier_scale=16.0,
                      init_scale=0.0, conv_size=3)
  return config
