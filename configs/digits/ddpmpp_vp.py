"""DDPM++ (VP SDE, continuous) on the bundled 8x8 digits: the CIFAR-10 DDPM++ cont. recipe (Song
et al. 2021, Table 3) at digit size."""
from configs.default_digits_configs import get_default_configs


def get_config():
  config = get_default_configs()
  config.training.update(sde='vpsde', continuous=True, reduce_mean=True)
  config.sampling.update(method='pc', predictor='euler_maruyama', corrector='none')
  config.data.centered = True
  config.model.update(name='ncsnpp', scale_by_sigma=False, normalization='GroupNorm',
                      nonlinearity='swish', resamp_with_conv=True, conditional=True, fir=False,
                      fir_kernel=[1, 3, 3, 1], skip_rescale=True, resblock_type='biggan',
                      progressive='none', progressive_input='none', progressive_combine='sum',
                      attention_type='ddpm', embedding_type='positional', fourier_scale=16.0,
                      init_scale=0.0, conv_size=3)
  return config
