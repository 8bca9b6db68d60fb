"""Scores of noise-prediction networks on the VP kernel x_t = alpha_t x_0 + sigma_t eps
(alpha_t^2 + sigma_t^2 = 1), for the parameterisations diffusion codebases train:

  'epsilon'       the network predicts eps (Ho et al. 2020);
  'v_prediction'  it predicts v = alpha_t eps - sigma_t x_0 (Salimans & Ho 2022), so that
                  eps = alpha_t v + sigma_t x_t;

and the score is grad log p_t(x_t) = -eps / sigma_t. Arrays x (B, ...), alpha and sigma (B,).
"""
from score_sde.sde import expand_to

PREDICTION_TYPES = ('epsilon', 'v_prediction')


def epsilon_from_output(output, x, alpha, sigma, prediction_type: str):
  """The eps estimate (like x) of a network `output` (like x) of `prediction_type` at x."""
  if prediction_type == 'epsilon':
    return output
  if prediction_type == 'v_prediction':
    return expand_to(alpha, x) * output + expand_to(sigma, x) * x
  raise ValueError(f'prediction_type = {prediction_type!r} is not supported; allowed: '
                   f'{list(PREDICTION_TYPES)}.')


def score_from_epsilon(eps, sigma):
  """grad log p_t = -eps / sigma_t, like eps."""
  return -eps / expand_to(sigma, eps)
