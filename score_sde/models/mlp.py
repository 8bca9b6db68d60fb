"""A time-conditioned MLP score network for low-dimensional data (toy 2-D distributions)."""
import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np

from score_sde import config_checks
from score_sde.models import conditioning, layers, register_model


@register_model(name='mlp')
class MLP(nn.Module):
  """Noise-conditional MLP: x (B, ...) and labels (B,) -> output like x.

  The noise label is embedded with sinusoidal features (`embedding_type='positional'`, for VP
  labels 999 t or step indices) or random Fourier features of log(label) (`'fourier'`, for VE
  labels sigma, and EDM models), passed through a dense layer, and projected into every hidden
  layer. With `scale_by_sigma` the output is divided by the label (= sigma for continuous VE
  models), so the network predicts sigma times the score (Song & Ermon 2020, technique 3). With
  num_classes = n the model is class-conditional: class_labels int (B,) in 0 .. n (n, and None,
  the null label) are embedded into nf features added to the output of that dense layer,
  before its activation (models.conditioning).

  Config fields (config.model): nf (hidden width), num_layers, embedding_type, fourier_scale,
  nonlinearity, dropout, scale_by_sigma, num_classes.
  """

  config: ml_collections.ConfigDict
  takes_class_labels = True

  @nn.compact
  def __call__(self, x, labels, train: bool = False, class_labels=None):
    config = self.config
    num_classes = conditioning.num_classes(config)
    nf = config_checks.positive_int(config, 'model.nf')
    num_layers = config_checks.positive_int(config, 'model.num_layers')
    act = layers.NONLINEARITIES[config_checks.choice(config, 'model.nonlinearity',
                                                     layers.NONLINEARITIES)]
    embedding_type = config_checks.choice(config, 'model.embedding_type', ('fourier', 'positional'))
    dropout = config_checks.unit_interval(config, 'model.dropout')

    sigma_labels = config.model.get('preconditioning') == 'edm' or (
        config_checks.get(config, 'training.sde') == 'vesde' and
        bool(config_checks.get(config, 'training.continuous')))
    if embedding_type == 'fourier' and not sigma_labels:
      raise ValueError("model.embedding_type = 'fourier' embeds log(sigma) and needs the sigma "
                       "labels of a continuous VESDE model or model.preconditioning = 'edm'; use "
                       "'positional' for VP, subVP and discrete models.")
    if embedding_type == 'fourier':
      temb = layers.GaussianFourierProjection(
          embedding_size=nf, scale=config_checks.positive_float(config, 'model.fourier_scale'))(
              jnp.log(labels))
    else:
      temb = layers.get_timestep_embedding(labels, nf)
    temb = conditioning.add_class_embedding(nn.Dense(nf)(temb), class_labels, num_classes)
    temb = act(temb)
    temb = nn.Dense(nf * num_layers)(temb).reshape(-1, num_layers, nf)

    h = x.reshape(x.shape[0], -1)
    for i in range(num_layers):
      h = act(nn.Dense(nf)(h) + temb[:, i])
      h = nn.Dropout(dropout, deterministic=not train)(h)
    out = nn.Dense(int(np.prod(x.shape[1:])))(h).reshape(x.shape)
    if config.model.get('scale_by_sigma', False):
      out = out / layers.label_sigmas(config, labels).reshape((-1,) + (1,) * (x.ndim - 1))
    return out
